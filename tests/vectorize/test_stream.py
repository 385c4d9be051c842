"""Streamed vector outputs: band by band, yet the same files as one write of every feature."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import StageError
from geoseg.io.instances import create_instance_array, table_from_columns, write_instance_table
from geoseg.io.mosaic import create_mosaic, open_mosaic, write_block
from geoseg.vectorize.classes import select_classes, vectorize_mosaic
from geoseg.vectorize.export import features_frame, open_vectors, regions_to_frame, to_wgs84
from geoseg.vectorize.instances import _instance_polygons, instances_to_frame, vectorize_instances
from tests.vectorize.serial_reference import merge_chunks

H, W, CHUNK = 200, 150, 32  # 7 bands of chunk rows
UTM = Affine(0.5, 0, 500000.0, 0, -0.5, 5000000.0)
CLASSES = ("background", "water", "building", "forest")


def blocky_labels(seed: int = 0) -> np.ndarray:
    """5-pixel blocks of random classes: hundreds of regions, many across seams, some over several bands."""
    coarse = np.random.default_rng(seed).integers(0, len(CLASSES), size=(H // 5, W // 5), dtype=np.uint8)
    labels = np.kron(coarse, np.ones((5, 5), np.uint8))
    labels[:, 70:75] = 1  # a river over every band
    return labels


def class_mosaic(tmp_path):
    labels = blocky_labels()
    mosaic = create_mosaic(
        tmp_path / "m.zarr",
        height=H,
        width=W,
        chunk=CHUNK,
        crs=CRS.from_epsg(32633),
        transform=UTM,
        class_names=CLASSES,
    )
    for row, col, h, w in mosaic.chunk_windows():
        write_block(mosaic, row, col, labels[row : row + h, col : col + w], np.ones((h, w), np.uint8))
    return tmp_path / "m.zarr"


def old_write(frame: gpd.GeoDataFrame, folder, fmt: str):
    """The in-memory writer this replaced: every feature in one call per file."""
    folder.mkdir()
    declared = "MultiPolygon" if (frame.geom_type == "MultiPolygon").any() else "Polygon"
    multi = declared == "MultiPolygon"
    if fmt == "gpkg":
        pyogrio.write_dataframe(
            frame, folder / "p.gpkg", layer="polygons", driver="GPKG", geometry_type=declared, promote_to_multi=multi
        )
    else:
        frame.reset_index(drop=True).to_parquet(folder / "p.parquet", index=False)
    wgs84 = to_wgs84(frame)
    declared = "MultiPolygon" if (wgs84.geom_type == "MultiPolygon").any() else "Polygon"
    pyogrio.write_dataframe(
        wgs84,
        folder / "p.geojson",
        layer="polygons",
        driver="GeoJSON",
        geometry_type=declared,
        promote_to_multi=declared == "MultiPolygon",
        layer_options={"RFC7946": "YES"},
    )
    return folder / f"p.{fmt}", folder / "p.geojson"


def read(path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path) if path.suffix == ".parquet" else pyogrio.read_dataframe(path, layer="polygons")


def assert_same_files(new, old) -> None:
    """Feature for feature: same order, attributes, dtypes, geometry type and CRS; geometries equal."""
    for new_path, old_path in zip(new, old, strict=True):
        got, want = read(new_path), read(old_path)
        assert len(want) > 0
        pd.testing.assert_frame_equal(got.drop(columns="geometry"), want.drop(columns="geometry"))
        assert got.crs == want.crs
        assert list(got.geom_type) == list(want.geom_type)
        assert shapely.equals_exact(got.geometry.values, want.geometry.values, tolerance=0).all()
        if new_path.suffix == ".gpkg":
            assert (
                pyogrio.read_info(new_path, layer="polygons")["geometry_type"]
                == pyogrio.read_info(old_path, layer="polygons")["geometry_type"]
            )
        if new_path.suffix == ".parquet":
            assert json.loads(pq.read_schema(new_path).metadata[b"geo"]) == json.loads(
                pq.read_schema(old_path).metadata[b"geo"]
            )
            assert pq.read_schema(new_path) == pq.read_schema(old_path)


def canonical(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The rows sorted by class and normalized geometry: the order bands write in is not the serial one."""
    key = shapely.to_wkb(shapely.normalize(frame.geometry.values), hex=True)
    return frame.assign(_key=key).sort_values(["class", "_key"]).drop(columns="_key").reset_index(drop=True)


def assert_same_features(new, old) -> None:
    """The same features in any order: attributes, dtypes, CRS, declared type; geometries equal as point sets."""
    for new_path, old_path in zip(new, old, strict=True):
        got, want = canonical(read(new_path)), canonical(read(old_path))
        assert len(want) > 0
        pd.testing.assert_frame_equal(got.drop(columns="geometry"), want.drop(columns="geometry"), rtol=1e-12)
        assert got.crs == want.crs
        assert shapely.equals(got.geometry.values, want.geometry.values).all()
        if new_path.suffix == ".gpkg":
            assert (
                pyogrio.read_info(new_path, layer="polygons")["geometry_type"]
                == pyogrio.read_info(old_path, layer="polygons")["geometry_type"]
            )


@pytest.mark.parametrize("fmt", ["gpkg", "parquet"])
def test_streamed_class_vectors_equal_one_write(tmp_path, fmt):
    path = class_mosaic(tmp_path)
    out = vectorize_mosaic(path, tmp_path / "new", fmt=fmt, min_area_m2=10.0)
    mosaic = open_mosaic(path)
    regions = merge_chunks(mosaic, select_classes(CLASSES, None), None)
    frame = regions_to_frame(regions, transform=UTM, crs=mosaic.crs, class_names=CLASSES, min_area_m2=10.0)
    assert out.features == len(frame) > 100
    assert out.per_class == {name: int((frame["class"] == name).sum()) for name in CLASSES[1:]}
    assert_same_features((out.vectors, out.geojson), old_write(frame, tmp_path / "old", fmt))
    if fmt == "parquet":  # written band by band, not at the end
        assert pq.ParquetFile(out.vectors).metadata.num_row_groups > 3
        assert pq.read_schema(out.vectors) == pq.read_schema(tmp_path / "old" / "p.parquet")


def instance_mosaic(tmp_path):
    """Blocks of ids over several bands, one L taller than a chunk, one id in two corner-touching parts."""
    ids = np.zeros((H, W), np.uint32)
    for k in range(60):
        row, col = divmod(k, 6)
        ids[row * 20 + 2 : row * 20 + 14, col * 25 + 3 : col * 25 + 20] = 100 - k  # ids against row order
    ids[:, 145:148] = 7  # a tall instance, finished only in the last band
    ids[190:195, 100:110] = 0
    ids[195:197, 140:142], ids[197:199, 142:144] = 200, 200  # a MultiPolygon at the end
    mosaic = create_mosaic(
        tmp_path / "m.zarr",
        height=H,
        width=W,
        chunk=CHUNK,
        crs=CRS.from_epsg(32633),
        transform=UTM,
        class_names=CLASSES,
    )
    create_instance_array(mosaic)[:] = ids
    known = sorted(int(i) for i in np.unique(ids) if i)
    boxes = []
    for i in known:
        rows, cols = np.nonzero(ids == i)
        boxes.append((rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    table = table_from_columns(
        known, [1 + i % 3 for i in known], CLASSES, [0.5] * len(known), boxes, [1] * len(known), 0.25
    )
    write_instance_table(table, tmp_path / "t.parquet")
    return tmp_path / "m.zarr", tmp_path / "t.parquet", table


@pytest.mark.parametrize("fmt", ["gpkg", "parquet"])
def test_streamed_instance_vectors_equal_one_write(tmp_path, fmt):
    path, table_path, table = instance_mosaic(tmp_path)
    out = vectorize_instances(path, table_path, tmp_path / "new", fmt=fmt)
    mosaic = open_mosaic(path)
    polygons = {i: g for row in _instance_polygons(mosaic, table, None) for i, g in row.items()}
    ids = np.array(sorted(polygons), np.int64)
    frame = instances_to_frame(
        ids,
        np.array([polygons[i] for i in ids], object),
        table.set_index(pd.Index(table["id"].to_numpy(np.int64))),
        transform=UTM,
        crs=mosaic.crs,
    )
    assert out.features == len(frame) == 62
    assert (frame.geom_type == "MultiPolygon").sum() == 1
    assert_same_files((out.vectors, out.geojson), old_write(frame, tmp_path / "old", fmt))


@pytest.mark.parametrize("fmt", ["gpkg", "parquet"])
def test_late_multipolygon_promotes_earlier_rows(tmp_path, fmt):
    crs = CRS.from_epsg(32633)
    squares = [shapely.box(500000 + 10 * i, 4999000, 500005 + 10 * i, 4999005) for i in range(5)]
    multi = shapely.union(shapely.box(500100, 4999000, 500101, 4999001), shapely.box(500101, 4999001, 500102, 4999002))
    batches = [
        features_frame({"class": ["water"] * 3, "class_id": np.ones(3, np.int32)}, squares[:3], crs),
        features_frame({"class": ["forest"] * 3, "class_id": np.full(3, 3, np.int32)}, [*squares[3:], multi], crs),
    ]
    with open_vectors(tmp_path / "new", batches[0].iloc[:0], fmt=fmt) as writer:
        for batch in batches:
            writer.write(batch)
    whole = pd.concat(batches, ignore_index=True)
    assert_same_files((writer.vectors, writer.geojson), old_write(whole, tmp_path / "old", fmt))
    assert set(read(writer.geojson).geom_type) == {"MultiPolygon"}


@pytest.mark.parametrize("fmt", ["gpkg", "parquet"])
def test_failed_stream_leaves_no_file(tmp_path, monkeypatch, fmt):
    path = class_mosaic(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StageError, match="writing the vector outputs failed"):
        vectorize_mosaic(path, tmp_path / "file" / "vectors", fmt=fmt)

    calls = []

    def fail_on_fourth_band(real_write):
        def write(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                raise pyogrio.errors.DataSourceError("disk full")
            return real_write(*args, **kwargs)

        return write

    # The GeoJSON is rendered without GDAL: fail the main output's writer.
    if fmt == "gpkg":
        monkeypatch.setattr(pyogrio, "write_dataframe", fail_on_fourth_band(pyogrio.write_dataframe))
    else:
        monkeypatch.setattr(pq.ParquetWriter, "write_table", fail_on_fourth_band(pq.ParquetWriter.write_table))
    (tmp_path / "v").mkdir()
    with pytest.raises(StageError, match="disk full"):
        vectorize_mosaic(path, tmp_path / "v", fmt=fmt)
    assert len(calls) == 4  # failed mid-stream, after earlier batches were written
    # Only the finished bands' parts stay (hidden), for the next run to reuse.
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [".vectorize-parts"]
