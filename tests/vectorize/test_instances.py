"""Instance vectorization: one feature per instance id, whatever the chunk seams."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import shapes

from geoseg.errors import InputRasterError, JobConfigError
from geoseg.io.instances import create_instance_array, table_from_columns, write_instance_table
from geoseg.io.mosaic import create_mosaic
from geoseg.vectorize import instances as instances_module
from geoseg.vectorize.export import features_frame, write_vectors
from geoseg.vectorize.instances import vectorize_instances

H, W, CHUNK = 150, 130, 32  # seams every 32 pixels; the last column of chunks is 2 pixels wide
PIXEL = 0.5
PIXEL_AREA = PIXEL * PIXEL
UTM = Affine(PIXEL, 0, 500000.0, 0, -PIXEL, 5000000.0)
CLASSES = ("background", "building", "tree")
BUILDING, TREE = 1, 2
SCORES = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5, 6: 0.95, 7: 0.55, 8: 0.65, 9: 0.75}
CLASS_OF = {1: BUILDING, 2: BUILDING, 3: TREE, 4: TREE, 5: BUILDING, 6: TREE, 7: BUILDING, 8: TREE, 9: BUILDING}


def instance_ids() -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.uint32)
    ids[5:20, 25:45] = 1  # across column seam 32
    ids[20:50, 20:50] = 2  # over the four-chunk corner (32, 32), touching 1 ...
    ids[30:40, 30:40] = 0  # ... with a hole across both seams
    ids[140:150, 120:130] = 3  # at the bottom-right scene corner, into the thin last column
    ids[60:130, 5:15] = 4  # an L larger than a chunk: read chunk by chunk
    ids[120:130, 5:100] = 4
    ids[60:64, 60:64] = 5  # two parts meeting only at a corner
    ids[64:68, 64:68] = 5
    ids[70:110, 40:90] = 6  # larger than a chunk, with a hole across seams 96 and 64
    ids[80:100, 50:80] = 0
    ids[10:12, 100:102] = 7  # 1 m²
    for r in range(20):  # a staircase, for simplification
        ids[30 + r, 100 : 101 + r] = 9
    ids[140:142, 0:2] = 99  # in the array only: ignored
    return ids


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


def make_instance_mosaic(tmp_path, pixels=None):
    """The mosaic holding ``pixels`` (default :func:`instance_ids`) and the table of :func:`instance_ids`."""
    ids = instance_ids()
    mosaic = create_mosaic(
        tmp_path / "mosaic.zarr",
        height=H,
        width=W,
        chunk=CHUNK,
        crs=CRS.from_epsg(32633),
        transform=UTM,
        class_names=CLASSES,
    )
    create_instance_array(mosaic)[:] = ids if pixels is None else pixels
    known = [i for i in sorted(SCORES) if i != 8]
    boxes = [bbox(ids == i) for i in known] + [(0, 0, 2, 2)]  # 8: in the table, no pixels left
    known.append(8)
    table = table_from_columns(
        known,
        [CLASS_OF[i] for i in known],
        CLASSES,
        [SCORES[i] for i in known],
        boxes,
        [int((ids == i).sum()) for i in known],
        PIXEL_AREA,
    )
    write_instance_table(table.sample(frac=1, random_state=0), tmp_path / "instances.parquet")  # any row order
    return tmp_path / "mosaic.zarr", tmp_path / "instances.parquet"


def run(tmp_path, **kwargs):
    mosaic, table = make_instance_mosaic(tmp_path)
    out = vectorize_instances(mosaic, table, tmp_path / "vectors", **kwargs)
    reader = gpd.read_parquet if out.format == "parquet" else (lambda p: pyogrio.read_dataframe(p, layer="polygons"))
    return out, reader(out.vectors)


def whole_array_polygon(ids: np.ndarray, iid: int):
    """Reference: the instance traced from the whole array in one piece, in map coordinates."""
    mask = ids == iid
    parts = [
        shapely.geometry.shape(g) for g, _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=UTM)
    ]
    return shapely.union_all(parts)


def test_one_exact_feature_per_instance(tmp_path):
    out, gdf = run(tmp_path)
    ids = instance_ids()
    assert list(gdf["id"]) == [1, 2, 3, 4, 5, 6, 7, 9]  # by id; 8 has no pixels, 99 no table row
    assert out.features == 8 and out.missing == 1 and out.format == "gpkg"
    assert out.per_class == {"building": 5, "tree": 3}
    assert gdf.is_valid.all()
    for row in gdf.itertuples():
        pixels = int((ids == row.id).sum())
        assert row.geometry.area == pytest.approx(pixels * PIXEL_AREA, abs=1e-6)
        assert row.area_m2 == pytest.approx(pixels * PIXEL_AREA, abs=1e-6)
        assert row.geometry.symmetric_difference(whole_array_polygon(ids, row.id)).area < 1e-6
        assert row.score == pytest.approx(SCORES[row.id]) and row.class_id == CLASS_OF[row.id]
    assert list(gdf["class"]) == [CLASSES[CLASS_OF[i]] for i in gdf["id"]]
    # The GeoPackage layer is MultiPolygon as a whole (5 is); every other instance is one part.
    parts = dict(zip(gdf["id"], shapely.get_num_geometries(gdf.geometry.values), strict=True))
    assert parts == {**dict.fromkeys(parts, 1), 5: 2}
    geom = {i: g.geoms[0] if i != 5 else g for i, g in zip(gdf["id"], gdf.geometry, strict=True)}
    assert len(geom[2].interiors) == 1 and len(geom[6].interiors) == 1  # holes kept, also across seams
    assert shapely.Polygon(geom[2].interiors[0]).area == pytest.approx(100 * PIXEL_AREA)
    assert shapely.Polygon(geom[6].interiors[0]).area == pytest.approx(600 * PIXEL_AREA)
    assert len(geom[1].exterior.coords) == 5 and len(geom[4].exterior.coords) == 7  # no seam vertices left
    x_east, y_south = UTM.c + W * PIXEL, UTM.f - H * PIXEL
    assert geom[3].bounds == pytest.approx((x_east - 10 * PIXEL, y_south, x_east, y_south + 10 * PIXEL))
    assert geom[1].touches(geom[2])  # neighbours share their border exactly


def test_crs_and_geojson_in_wgs84(tmp_path):
    out, gdf = run(tmp_path)
    info = pyogrio.read_info(out.vectors, layer="polygons")
    assert pyproj.CRS(info["crs"]) == pyproj.CRS.from_epsg(32633)
    assert list(info["fields"]) == ["id", "class", "class_id", "score", "area_m2"]
    assert info["geometry_type"] == "MultiPolygon"  # one layer type: 5 is multi
    doc = json.loads(out.geojson.read_text())
    assert [f["properties"]["id"] for f in doc["features"]] == list(gdf["id"])
    assert doc["features"][0]["properties"]["class"] == "building"
    wgs = pyogrio.read_dataframe(out.geojson)
    assert pyproj.CRS(wgs.crs) == pyproj.CRS.from_epsg(4326) and wgs.is_valid.all()
    back = wgs.to_crs(32633)
    assert back.geometry.hausdorff_distance(gdf.geometry).max() < 0.02  # 7 decimals ≈ 1 cm
    lon, lat = wgs.geometry.iloc[0].centroid.coords[0]
    assert 14 < lon < 16 and 45 < lat < 46  # lon/lat order (UTM 33N, ~45°N)


def test_geoparquet_output(tmp_path):
    (tmp_path / "vectors").mkdir()
    (tmp_path / "vectors" / "polygons.gpkg").write_bytes(b"from an earlier run")
    out, gdf = run(tmp_path, fmt="parquet")
    assert out.vectors.name == "polygons.parquet" and out.format == "parquet"
    assert pyproj.CRS(gdf.crs) == pyproj.CRS.from_epsg(32633)
    assert list(gdf.columns) == ["id", "class", "class_id", "score", "area_m2", "geometry"]
    assert list(gdf["id"]) == [1, 2, 3, 4, 5, 6, 7, 9] and gdf.is_valid.all()
    # GeoParquet keeps each feature's own type; the GeoPackage layer is all MultiPolygon.
    assert list(gdf.geom_type) == ["Polygon"] * 4 + ["MultiPolygon"] + ["Polygon"] * 3
    _, gpkg = run(tmp_path / "again")
    assert (gdf.geometry.symmetric_difference(gpkg.geometry).area == 0).all()
    assert sorted(p.name for p in out.vectors.parent.iterdir()) == ["polygons.geojson", "polygons.parquet"]
    meta = json.loads(pq.read_metadata(out.vectors).metadata[b"geo"])
    assert meta["primary_column"] == "geometry" and "crs" in meta["columns"]["geometry"]


def test_simplify_keeps_validity_and_reduces_vertices(tmp_path):
    _, exact = run(tmp_path / "exact")
    _, simple = run(tmp_path / "simple", simplify_m=1.0)
    assert list(simple["id"]) == list(exact["id"]) and simple.is_valid.all()
    assert (shapely.get_type_id(simple.geometry.values) != 7).all()
    count = shapely.get_num_coordinates
    stair = exact["id"] == 9
    assert count(simple.geometry[stair].values)[0] < count(exact.geometry[stair].values)[0] / 4
    assert count(simple.geometry.values).sum() < count(exact.geometry.values).sum()
    assert np.allclose(simple["area_m2"], simple.geometry.area)  # the area as written
    assert (simple.geometry.hausdorff_distance(exact.geometry) <= 1.0 + 1e-9).all()
    assert len(simple.geometry[simple["id"] == 2].iloc[0].geoms[0].interiors) == 1


def test_min_area_drops_small_instances(tmp_path):
    out, gdf = run(tmp_path, min_area_m2=2.0)
    assert 7 not in set(gdf["id"]) and out.features == 7 and out.per_class == {"building": 4, "tree": 3}
    assert (gdf["area_m2"] >= 2.0).all()


def test_windows_stay_within_two_by_two_chunks(tmp_path, monkeypatch):
    shapes_seen, real_paint = [], instances_module._paint

    def recording_paint(block, *args):
        shapes_seen.append(block.shape)
        return real_paint(block, *args)

    monkeypatch.setattr(instances_module, "_paint", recording_paint)
    calls = []
    out, _ = run(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert out.features == 8 and shapes_seen
    assert max(max(s) for s in shapes_seen) <= 2 * CHUNK  # the 70 × 95 L went chunk by chunk
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_empty_table_writes_empty_files_with_the_schema(tmp_path):
    mosaic, table = make_instance_mosaic(tmp_path, np.zeros((H, W), dtype=np.uint32))
    out = vectorize_instances(mosaic, table, tmp_path / "vectors")
    assert out.features == 0 and out.missing == 9 and out.per_class == {"building": 0, "tree": 0}
    info = pyogrio.read_info(out.vectors, layer="polygons")
    assert list(info["fields"]) == ["id", "class", "class_id", "score", "area_m2"] and info["features"] == 0
    assert json.loads(out.geojson.read_text())["features"] == []
    parquet = gpd.read_parquet(vectorize_instances(mosaic, table, tmp_path / "pq", fmt="parquet").vectors)
    assert len(parquet) == 0 and parquet.crs.to_epsg() == 32633


def test_geographic_mosaic_gets_geodesic_area(tmp_path):
    ids = np.zeros((40, 40), dtype=np.uint32)
    ids[5:25, 10:30] = 1
    transform = Affine(1e-5, 0, 15.0, 0, -1e-5, 45.0)
    mosaic = create_mosaic(
        tmp_path / "geo.zarr",
        height=40,
        width=40,
        chunk=16,
        crs=CRS.from_epsg(4326),
        transform=transform,
        class_names=CLASSES,
    )
    create_instance_array(mosaic)[:] = ids
    write_instance_table(
        table_from_columns([1], [1], CLASSES, [0.9], [(5, 10, 25, 30)], [400], 1.0), tmp_path / "t.parquet"
    )
    out = vectorize_instances(tmp_path / "geo.zarr", tmp_path / "t.parquet", tmp_path / "v", simplify_m=0.5)
    gdf = pyogrio.read_dataframe(out.vectors)
    west, east, north, south = 15.0 + 10e-5, 15.0 + 30e-5, 45.0 - 5e-5, 45.0 - 25e-5
    expected, _ = pyproj.Geod(ellps="WGS84").polygon_area_perimeter(
        [west, east, east, west], [south, south, north, north]
    )
    assert gdf["area_m2"].iloc[0] == pytest.approx(abs(expected), rel=1e-6)


def test_bad_inputs_are_refused(tmp_path):
    mosaic, table = make_instance_mosaic(tmp_path)
    with pytest.raises(JobConfigError, match=r"vectorize\.format.*'shp'"):
        vectorize_instances(mosaic, table, tmp_path / "v", fmt="shp")
    with pytest.raises(JobConfigError, match="simplify_m: must be ≥ 0"):
        vectorize_instances(mosaic, table, tmp_path / "v", simplify_m=-1)
    with pytest.raises(InputRasterError, match="instance table not found"):
        vectorize_instances(mosaic, tmp_path / "nope.parquet", tmp_path / "v")
    bad = table_from_columns([1], [1], CLASSES, [0.9], [(140, 120, 151, 130)], [1], PIXEL_AREA)
    write_instance_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(InputRasterError, match=r"instance 1 has bounding box rows 140:151.*150 × 130"):
        vectorize_instances(mosaic, tmp_path / "bad.parquet", tmp_path / "v")
    plain = create_mosaic(
        tmp_path / "plain.zarr",
        height=8,
        width=8,
        chunk=8,
        crs=CRS.from_epsg(32633),
        transform=UTM,
        class_names=CLASSES,
    )
    with pytest.raises(InputRasterError, match="has no 'instances' array"):
        vectorize_instances(plain.path, table, tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_write_vectors_keeps_extra_columns_in_every_format(tmp_path):
    frame = features_frame(
        {
            "id": np.array([7], dtype=np.int64),
            "class": ["building"],
            "class_id": np.array([1], dtype=np.int32),
            "score": np.array([0.5], dtype=np.float32),
            "area_m2": [1.0],
        },
        [shapely.box(500000, 4999999, 500001, 5000000)],
        CRS.from_epsg(32633),
    )
    frame.index = [41]  # left by filtering: must not become a column
    for fmt in ("gpkg", "parquet"):
        vectors, geojson = write_vectors(frame, tmp_path / fmt, fmt=fmt)
        back = gpd.read_parquet(vectors) if fmt == "parquet" else pyogrio.read_dataframe(vectors)
        assert list(back.columns) == ["id", "class", "class_id", "score", "area_m2", "geometry"]
        assert back.crs == frame.crs
        if fmt == "parquet":  # what any Parquet reader (GDAL, QGIS) sees: no index column
            assert pq.read_schema(vectors).names == list(back.columns)
        assert back["id"].iloc[0] == 7 and back["score"].iloc[0] == pytest.approx(0.5)
        props = json.loads(geojson.read_text())["features"][0]["properties"]
        assert props == {"id": 7, "class": "building", "class_id": 1, "score": 0.5, "area_m2": 1.0}
    with pytest.raises(ValueError, match="'shp'"):
        write_vectors(frame, tmp_path / "x", fmt="shp")
