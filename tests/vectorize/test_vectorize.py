"""The vectorize stage: one feature per 4-connected region, whatever the chunk seams."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import shapes
from scipy import ndimage

from geoseg.errors import JobConfigError, StageError
from geoseg.io.mosaic import create_mosaic, write_block
from geoseg.vectorize import SeamMerger, polygonize_chunk, vectorize_mosaic
from geoseg.vectorize import stream as stream_module
from geoseg.vectorize.pixelgeom import drop_collinear, node_polygons, union_pieces

H, W, CHUNK = 300, 260, 64  # seams at rows 64/128/192/256 and columns 64/128/192/256
PIXEL = 0.5
PIXEL_AREA = PIXEL * PIXEL
UTM = Affine(PIXEL, 0, 500000.0, 0, -PIXEL, 5000000.0)
CLASSES = ("background", "water", "building", "forest")
WATER, BUILDING, FOREST = 1, 2, 3
UTM_CRS = CRS.from_epsg(32633)


def make_mosaic(path, labels, valid=None, *, chunk=CHUNK, crs=UTM_CRS, transform=UTM):
    """A mosaic holding ``labels``, written chunk by chunk as predict does."""
    valid = np.ones_like(labels) if valid is None else valid
    height, width = labels.shape
    mosaic = create_mosaic(
        path, height=height, width=width, chunk=chunk, crs=crs, transform=transform, class_names=CLASSES
    )
    for row, col, h, w in mosaic.chunk_windows():
        write_block(mosaic, row, col, labels[row : row + h, col : col + w], valid[row : row + h, col : col + w])
    return path


def vectorize(tmp_path, labels, valid=None, **kwargs):
    """Vectorize ``labels``; return the outputs and the GeoPackage as a GeoDataFrame."""
    mosaic = make_mosaic(tmp_path / "mosaic.zarr", labels, valid)
    out = vectorize_mosaic(mosaic, tmp_path / "vectors", **kwargs)
    return out, pyogrio.read_dataframe(out.vectors, layer="polygons")


def blank():
    return np.zeros((H, W), dtype=np.uint8)


def spiral_water():
    """A body that crosses row and column seams, leaves chunk (0, 0) and re-enters it."""
    lab = blank()
    lab[10:20, 30:100] = WATER  # top arm: chunk (0,0) -> (0,1)
    lab[10:90, 90:100] = WATER  # down through row seam 64 in chunk column 1
    lab[80:90, 20:100] = WATER  # back left through column seam 64 into chunk (1,0)
    lab[30:90, 20:30] = WATER  # up through row seam 64, back into chunk (0,0)
    lab[30:40, 20:50] = WATER  # a second piece in chunk (0,0), joined only via 3 other chunks
    lab[80:250, 60:70] = WATER  # long leg down across row seams 128 and 192
    lab[240:250, 60:259] = WATER  # across column seams 128, 192 and 256 into the thin last column
    lab[100:250, 185:200] = WATER  # a U: back up across row seams 192 and 128
    return lab


def test_body_crossing_many_seams_is_one_feature_with_exact_area(tmp_path):
    lab = spiral_water()
    # Sanity: chunk (0,0) alone holds two separate pieces of the body.
    assert ndimage.label(lab[:64, :64] == WATER)[1] == 2
    out, gdf = vectorize(tmp_path, lab)
    assert out.features == 1 and out.per_class == {"water": 1, "building": 0, "forest": 0}
    (geom,) = gdf.geometry
    assert geom.geom_type == "Polygon" and geom.is_valid
    assert geom.area == pytest.approx((lab == WATER).sum() * PIXEL_AREA, abs=1e-6)
    assert gdf["area_m2"].iloc[0] == pytest.approx((lab == WATER).sum() * PIXEL_AREA, abs=1e-6)
    assert gdf["class"].iloc[0] == "water" and gdf["class_id"].iloc[0] == WATER


def test_block_over_a_four_chunk_corner_is_one_feature(tmp_path):
    lab = blank()
    lab[50:80, 50:80] = WATER  # covers the point where chunks (0,0), (0,1), (1,0), (1,1) meet
    _, gdf = vectorize(tmp_path, lab)
    assert len(gdf) == 1
    assert shapely.equals(gdf.geometry.iloc[0], shapely.box(500025, 4999960, 500040, 4999975))
    assert len(gdf.geometry.iloc[0].exterior.coords) == 5  # no leftover vertices where the seams were


def test_separate_and_diagonal_regions_stay_apart(tmp_path):
    lab = blank()
    lab[54:64, 54:64] = WATER  # these two meet only at the corner shared by four chunks
    lab[64:74, 64:74] = WATER
    lab[10:20, 10:20] = WATER  # corner contact inside one chunk
    lab[20:30, 20:30] = WATER
    lab[200:210, 54:64] = WATER  # corner contact across the column seam 64
    lab[210:220, 64:74] = WATER
    lab[120:128, 150:160] = WATER  # corner contact across the row seam 128
    lab[128:136, 160:170] = WATER
    lab[100:110, 100:110] = WATER  # two bodies one pixel apart across a seam
    lab[100:110, 111:120] = WATER
    lab[150:160, 120:128] = WATER  # water meets building across a seam: two classes, two features
    lab[150:160, 128:140] = BUILDING
    _, gdf = vectorize(tmp_path, lab)
    assert (gdf["class"] == "water").sum() == 11 and (gdf["class"] == "building").sum() == 1
    assert sorted(gdf["area_m2"] / PIXEL_AREA) == sorted([100] * 7 + [80, 80, 80, 90, 120])


def test_hole_is_kept_inside_a_chunk_and_across_seams(tmp_path):
    lab = blank()
    lab[100:160, 100:160] = WATER  # a ring around the seam crossing at (128, 128)
    lab[110:150, 110:150] = FOREST  # an island of another class
    lab[10:30, 10:30] = WATER  # a ring inside chunk (0,0) around background
    lab[15:25, 15:25] = 0
    _, gdf = vectorize(tmp_path, lab, classes=["water"])
    water = gdf.sort_values("area_m2").geometry.tolist()
    assert len(water) == 2
    small, ring = water
    assert len(small.interiors) == 1 and shapely.Polygon(small.interiors[0]).area == pytest.approx(100 * PIXEL_AREA)
    assert len(ring.interiors) == 1 and shapely.Polygon(ring.interiors[0]).area == pytest.approx(1600 * PIXEL_AREA)
    assert ring.area == pytest.approx((3600 - 1600) * PIXEL_AREA)


def test_invalid_pixels_are_never_in_a_polygon(tmp_path):
    lab = blank()
    lab[20:120, 20:120] = WATER
    valid = np.ones_like(lab)
    valid[:, 60:66] = 0  # a nodata strip across the seam cuts the body in two
    valid[100:110, 100:110] = 0  # and a nodata hole
    lab[200:230, 200:230] = BUILDING
    valid[200:230, 200:230] = 0  # labels under nodata are ignored altogether
    _, gdf = vectorize(tmp_path, lab, valid)
    assert list(gdf["class"]) == ["water", "water"]
    expected = ((lab == WATER) & (valid == 1)).sum() * PIXEL_AREA
    assert gdf["area_m2"].sum() == pytest.approx(expected)
    nodata = shapely.box(500000 + 100 * PIXEL, 5000000 - 110 * PIXEL, 500000 + 110 * PIXEL, 5000000 - 100 * PIXEL)
    assert all(shapely.intersection(g, nodata).area == 0 for g in gdf.geometry)


def smooth_classes(seed=0, shape=(H, W), sigma=4.0):
    """A realistic label pattern: smoothed noise cut into four classes."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return np.digitize(field, np.quantile(field, [0.3, 0.55, 0.8])).astype(np.uint8)


def test_matches_whole_array_labelling_on_a_random_scene(tmp_path):
    lab = smooth_classes(seed=1)
    valid = (ndimage.gaussian_filter(np.random.default_rng(2).standard_normal(lab.shape), 6) > -0.05).astype(np.uint8)
    out, gdf = vectorize(tmp_path, lab, valid)
    for class_id, name in enumerate(CLASSES[1:], start=1):
        mask = (lab == class_id) & (valid == 1)
        components, count = ndimage.label(mask)  # default structure is 4-connected
        expected_sizes = sorted(np.bincount(components.ravel())[1:].tolist())
        ours = gdf[gdf["class"] == name]
        assert out.per_class[name] == count == len(ours)
        assert sorted(np.rint(ours["area_m2"] / PIXEL_AREA).astype(int).tolist()) == expected_sizes
        # The whole array through rasterio (no chunks at all) agrees feature for feature.
        whole = [
            shapely.geometry.shape(g)
            for g, _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=UTM)
        ]
        assert sum(shapely.equals(a, b) for a in ours.geometry for b in whole) == count
    assert shapely.is_valid(gdf.geometry.values).all()


def test_gpkg_crs_and_bounds(tmp_path):
    lab = spiral_water()
    out, gdf = vectorize(tmp_path, lab)
    info = pyogrio.read_info(out.vectors, layer="polygons")
    assert pyproj.CRS(info["crs"]) == pyproj.CRS.from_epsg(32633)
    assert info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == ["class", "class_id", "area_m2"]
    rows, cols = np.nonzero(lab)
    expected = (
        500000 + cols.min() * PIXEL,
        5000000 - (rows.max() + 1) * PIXEL,
        500000 + (cols.max() + 1) * PIXEL,
        5000000 - rows.min() * PIXEL,
    )
    assert tuple(gdf.total_bounds) == pytest.approx(expected)


def test_geojson_is_lon_lat_wgs84(tmp_path):
    lab = blank()
    lab[0:10, 0:10] = WATER  # its top-left corner is easting 500000, northing 5000000
    out, _ = vectorize(tmp_path, lab)
    doc = json.loads(out.geojson.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
    feature = doc["features"][0]
    assert feature["properties"]["class"] == "water"
    ring = np.array(feature["geometry"]["coordinates"][0])
    lon, lat = pyproj.Transformer.from_crs(32633, 4326, always_xy=True).transform(500000, 5000000)
    assert lon == pytest.approx(15.0) and 45.0 < lat < 45.2
    assert ring[:, 0].min() == pytest.approx(lon, abs=1e-6) and ring[:, 1].max() == pytest.approx(lat, abs=1e-6)
    # RFC 7946 wants exterior rings counter-clockwise.
    assert shapely.Polygon(ring).exterior.is_ccw
    read_back = pyogrio.read_dataframe(out.geojson)
    assert read_back.crs.to_epsg() == 4326 and read_back.is_valid.all()


def test_classes_filter_and_unknown_class(tmp_path):
    lab = smooth_classes(seed=3)
    out, gdf = vectorize(tmp_path, lab, classes=["building", "background"])
    assert set(gdf["class"]) == {"building", "background"}
    assert set(out.per_class) == {"background", "building"}
    with pytest.raises(JobConfigError) as err:
        vectorize_mosaic(tmp_path / "mosaic.zarr", tmp_path / "v2", classes=["water", "lava"])
    assert "'lava'" in str(err.value) and "'water'" in str(err.value) and "'forest'" in str(err.value)
    assert "'water'" not in str(err.value).split("lava")[0]  # only the bad name is blamed
    assert not (tmp_path / "v2").exists()


def test_simplification_stays_valid_and_seamless(tmp_path):
    lab = smooth_classes(seed=4)
    exact, exact_gdf = vectorize(tmp_path, lab)
    simple = vectorize_mosaic(tmp_path / "mosaic.zarr", tmp_path / "simple", simplify_m=1.5)
    gdf = pyogrio.read_dataframe(simple.vectors)
    assert simple.features == exact.features  # no region vanishes
    assert gdf.is_valid.all() and (gdf.geom_type == "Polygon").all()
    assert (
        shapely.get_num_coordinates(gdf.geometry.values).sum()
        < 0.7 * shapely.get_num_coordinates(exact_gdf.geometry.values).sum()
    )
    # Touching classes were simplified as one coverage: no overlaps opened up.
    union = shapely.union_all(gdf.geometry.values)
    assert union.area == pytest.approx(gdf["area_m2"].sum(), rel=1e-9)
    # Visvalingam–Whyatt on pixel staircases cuts outer corners and fills inner ones about evenly;
    # at 3 px of tolerance on these small blobs the classes' total stays within 2%.
    assert gdf["area_m2"].sum() == pytest.approx(exact_gdf["area_m2"].sum(), rel=0.02)
    assert pyogrio.read_dataframe(simple.geojson).is_valid.all()


def test_min_area_drops_small_regions(tmp_path):
    lab = blank()
    lab[10:12, 10:12] = WATER  # 1 m²
    lab[100:140, 100:140] = WATER  # 400 m²
    out, gdf = vectorize(tmp_path, lab, min_area_m2=2.0)
    assert out.features == 1 and gdf["area_m2"].iloc[0] == pytest.approx(400.0)


def test_empty_result_writes_valid_empty_files(tmp_path):
    out, gdf = vectorize(tmp_path, blank())
    assert out.features == 0 and len(gdf) == 0 and out.per_class == {"water": 0, "building": 0, "forest": 0}
    info = pyogrio.read_info(out.vectors, layer="polygons")
    assert list(info["fields"]) == ["class", "class_id", "area_m2"] and info["geometry_type"] == "Polygon"
    assert pyproj.CRS(info["crs"]) == pyproj.CRS.from_epsg(32633)
    assert json.loads(out.geojson.read_text())["features"] == []


def test_progress_and_no_partial_files(tmp_path):
    calls = []
    out, _ = vectorize(tmp_path, spiral_water(), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]  # after each band (here one chunk row each)
    assert sorted(p.name for p in out.vectors.parent.iterdir()) == ["polygons.geojson", "polygons.gpkg"]


def test_failed_write_leaves_no_finished_looking_file(tmp_path, monkeypatch):
    make_mosaic(tmp_path / "mosaic.zarr", spiral_water())
    first = vectorize_mosaic(tmp_path / "mosaic.zarr", tmp_path / "vectors")
    before = first.geojson.read_bytes(), first.vectors.read_bytes()

    def crash_on_geojson(self, header, features, rows):
        self.file.write(header + features[: len(features) // 2])  # half-done output on disk, then die
        raise OSError("disk full")

    monkeypatch.setattr(stream_module._GeoJsonStream, "_append", crash_on_geojson)
    with pytest.raises(StageError, match="disk full"):
        vectorize_mosaic(tmp_path / "mosaic.zarr", tmp_path / "vectors")
    assert (first.geojson.read_bytes(), first.vectors.read_bytes()) == before  # earlier outputs untouched
    visible = [p.name for p in (tmp_path / "vectors").iterdir() if not p.name.startswith(".vectorize-parts")]
    assert sorted(visible) == ["polygons.geojson", "polygons.gpkg"]


def test_geographic_mosaic_gets_geodesic_area(tmp_path):
    lab = np.zeros((100, 100), dtype=np.uint8)
    lab[10:60, 20:90] = WATER
    transform = Affine(1e-5, 0, 15.0, 0, -1e-5, 45.0)
    make_mosaic(tmp_path / "geo.zarr", lab, chunk=32, crs=CRS.from_epsg(4326), transform=transform)
    out = vectorize_mosaic(tmp_path / "geo.zarr", tmp_path / "geo", simplify_m=0.5)
    gdf = pyogrio.read_dataframe(out.vectors)
    west, east, north, south = 15.0 + 20e-5, 15.0 + 90e-5, 45.0 - 10e-5, 45.0 - 60e-5
    expected, _ = pyproj.Geod(ellps="WGS84").polygon_area_perimeter(
        [west, east, east, west], [south, south, north, north]
    )
    assert len(gdf) == 1 and gdf["area_m2"].iloc[0] == pytest.approx(abs(expected), rel=1e-6)
    assert 50 * 70 * 0.7 < gdf["area_m2"].iloc[0] < 50 * 70 * 1.2  # ~0.79 m × 1.11 m pixels


def test_merger_refuses_chunks_out_of_order():
    lab = np.ones((8, 8), dtype=np.uint8)
    merger = SeamMerger(16, 16)
    with pytest.raises(ValueError, match="out of order"):
        merger.add(polygonize_chunk(lab, lab, 0, 8, [1]))


def test_noding_makes_pixel_polygons_a_coverage_without_moving_them():
    # GDAL puts vertices only where an outline turns: the long top edge of
    # ``strip`` has none where ``left`` and ``right`` meet beneath it.
    strip, left, right = shapely.box(0, 0, 6, 1), shapely.box(0, 1, 2, 3), shapely.box(2, 1, 6, 3)
    holed = shapely.Polygon([(10, 0), (10, 5), (15, 5), (15, 0)], [[(11, 1), (11, 4), (14, 4), (14, 1)]])
    island = shapely.box(11, 1, 14, 2)
    two_parts = shapely.MultiPolygon([shapely.box(20, 0, 25, 1), shapely.box(30, 0, 31, 1)])
    below = shapely.box(22, 1, 23, 2)
    geoms = np.array([strip, left, right, holed, island, two_parts, below], dtype=object)
    assert not shapely.coverage_is_valid(geoms)
    noded = node_polygons(geoms)
    assert shapely.coverage_is_valid(noded)
    assert shapely.equals(noded, geoms).all() and list(shapely.get_type_id(noded)) == [3, 3, 3, 3, 3, 6, 3]
    assert (2.0, 1.0) in noded[0].exterior.coords and (12.0, 1.0) not in noded[4].exterior.coords
    assert {(22.0, 1.0), (23.0, 1.0)} <= set(noded[5].geoms[0].exterior.coords)


def test_drop_collinear_and_union_pieces_keep_the_shape():
    ring = [(0, 0), (1, 0), (2, 0), (2, 0), (2, 2), (0, 2), (0, 1), (0, 0)]
    (cleaned,) = drop_collinear(np.array([shapely.Polygon(ring)], dtype=object))
    assert cleaned.equals(shapely.box(0, 0, 2, 2)) and len(cleaned.exterior.coords) == 5
    # Pieces of a ring around a hole, cut by seams at x=4 and y=4.
    pieces = [
        shapely.box(0, 0, 4, 4).difference(shapely.box(2, 2, 4, 4)),
        shapely.box(4, 0, 8, 4).difference(shapely.box(4, 2, 6, 4)),
        shapely.box(0, 4, 4, 8).difference(shapely.box(2, 4, 4, 6)),
        shapely.box(4, 4, 8, 8).difference(shapely.box(4, 4, 6, 6)),
    ]
    region = union_pieces(pieces)
    assert region.equals(shapely.box(0, 0, 8, 8).difference(shapely.box(2, 2, 6, 6)))
    assert len(region.exterior.coords) == 5 and len(region.interiors[0].coords) == 5


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="GDAL's ogrinfo is not installed")
def test_ogrinfo_reads_both_outputs(tmp_path):
    out, _ = vectorize(tmp_path, spiral_water())
    run = subprocess.run(["ogrinfo", "-so", "-al", str(out.vectors)], capture_output=True, text=True, check=True)
    gpkg = run.stdout
    assert "partially supported" not in run.stderr  # a GeoPackage version old GDAL/QGIS read fully
    assert "Layer name: polygons" in gpkg and "Feature Count: 1" in gpkg and "Geometry: Polygon" in gpkg
    assert 'ID["EPSG",32633]' in gpkg and "class_id: Integer" in gpkg and "area_m2: Real" in gpkg
    geojson = subprocess.run(
        ["ogrinfo", "-so", "-al", str(out.geojson)], capture_output=True, text=True, check=True
    ).stdout
    assert "Feature Count: 1" in geojson and "WGS 84" in geojson and "class: String" in geojson
