"""Vectorizing by bands of chunk rows: any split gives the serial features; any task order the same bytes; resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import shapely

from geoseg.io.mosaic import open_mosaic, write_block
from geoseg.vectorize import band_ids, bands
from geoseg.vectorize.bands import plan_bands, read_summary, vectorize_band
from geoseg.vectorize.classes import in_process, select_classes, vectorize_mosaic
from geoseg.vectorize.export import regions_to_frame
from geoseg.vectorize.stream import VectorWriter
from tests.vectorize.serial_reference import merge_chunks, numbered_frame, write_instance_ids
from tests.vectorize.test_stream import CHUNK, CLASSES, UTM, canonical, class_mosaic, read


def test_plan_bands_covers_the_rows_in_whole_chunk_rows():
    assert plan_bands(200, 150, 32) == [(r, min(r + 32, 200)) for r in range(0, 200, 32)]  # 7 rows, 1 per band
    assert plan_bands(4096, 4096, 448) == [(r, min(r + 896, 4096)) for r in range(0, 4096, 896)]  # 10 rows: 5 bands
    survey = plan_bands(16384, 16384, 448)  # 37 chunk rows of 7.3 MPix: 2 per band
    assert survey[0] == (0, 896) and survey[-1][1] == 16384 and len(survey) == 19
    assert len(plan_bands(40000, 40000, 448)) == 90  # one chunk row (17.9 MPix) per band
    assert all(a[1] == b[0] for a, b in itertools.pairwise(survey))
    assert plan_bands(100, 4096, 448) == [(0, 100)]  # one chunk row: one band


def _serial_frame(path, min_area_m2=0.0):
    mosaic = open_mosaic(path)
    regions = merge_chunks(mosaic, select_classes(CLASSES, None), None)
    return regions_to_frame(regions, transform=UTM, crs=mosaic.crs, class_names=CLASSES, min_area_m2=min_area_m2)


def _assert_same(got, want):
    got, want = canonical(got), canonical(want)
    assert list(got["class"]) == list(want["class"])
    assert np.allclose(got["area_m2"], want["area_m2"], rtol=1e-12, atol=0)
    assert shapely.equals(got.geometry.values, want.geometry.values).all()


@pytest.mark.parametrize("rows_per_band", [1, 3, 7])
def test_any_band_split_gives_the_serial_features(tmp_path, monkeypatch, rows_per_band):
    path = class_mosaic(tmp_path)
    split = [(r, min(r + rows_per_band * CHUNK, 200)) for r in range(0, 200, rows_per_band * CHUNK)]
    monkeypatch.setattr(bands, "plan_bands", lambda height, width, chunk: split)
    out = vectorize_mosaic(path, tmp_path / "v", fmt="parquet", min_area_m2=10.0)
    got = read(out.vectors)
    assert shapely.is_valid(got.geometry.values).all()
    _assert_same(got, _serial_frame(path, min_area_m2=10.0))
    # The river down columns 70:75 crosses every band and is one feature, holes and all.
    river = got[(got["class"] == "water") & (got.geometry.bounds["maxy"] - got.geometry.bounds["miny"] >= 99.9)]
    assert len(river) == 1
    assert not (tmp_path / "v" / ".vectorize-parts").exists()


def test_tasks_finishing_in_any_order_write_the_same_bytes(tmp_path):
    path = class_mosaic(tmp_path)

    def backwards(function, arguments):  # as parallel workers might finish them; yielded in order
        return iter([function(*args) for args in reversed(arguments)][::-1])

    one = vectorize_mosaic(path, tmp_path / "one", fmt="parquet")
    other = vectorize_mosaic(path, tmp_path / "other", fmt="parquet", run_tasks=backwards)
    assert one.vectors.read_bytes() == other.vectors.read_bytes()
    assert one.geojson.read_bytes() == other.geojson.read_bytes()


def test_the_driver_appends_a_band_in_slices_with_the_same_features(tmp_path, monkeypatch):
    """A band spans the scene's width: the driver reads and appends it a few features at a time."""
    path = class_mosaic(tmp_path)
    whole = vectorize_mosaic(path, tmp_path / "whole")
    monkeypatch.setattr(bands, "FEATURE_SLICE", 2)
    appended: list[int] = []
    original = VectorWriter.write_features

    def counted(self, batch):
        appended.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(VectorWriter, "write_features", counted)
    sliced = vectorize_mosaic(path, tmp_path / "sliced")
    assert max(appended) == 2 and sum(appended) < sliced.features  # the rest: regions joined across seams
    assert sliced.features == whole.features
    _assert_same(read(sliced.vectors), read(whole.vectors))
    assert sliced.geojson.read_bytes() == whole.geojson.read_bytes()


class Killed(Exception):
    pass


def test_a_killed_run_resumes_at_the_first_unfinished_band(tmp_path):
    path = class_mosaic(tmp_path)
    clean = vectorize_mosaic(path, tmp_path / "clean", fmt="parquet")
    out = tmp_path / "v"

    def killed_after_two(function, arguments):
        for args in arguments[:2]:
            yield function(*args)
        raise Killed

    with pytest.raises(Killed):
        vectorize_mosaic(path, out, fmt="parquet", run_tasks=killed_after_two)
    assert not (out / "polygons.parquet").exists()
    redone = []

    def counting(function, arguments):
        for (request,) in arguments:
            if read_summary(request) is None:
                redone.append(request.index)
            yield function(request)

    again = vectorize_mosaic(path, out, fmt="parquet", run_tasks=counting)
    assert redone == [2, 3, 4, 5, 6]
    assert again.vectors.read_bytes() == clean.vectors.read_bytes()
    assert again.geojson.read_bytes() == clean.geojson.read_bytes()


def test_parts_of_another_mosaic_state_are_not_reused(tmp_path):
    path = class_mosaic(tmp_path)
    mosaic = open_mosaic(path, mode="r+")
    requests = bands.band_requests(mosaic, tmp_path / "parts", select_classes(CLASSES, None), 0.0)
    vectorize_band(requests[0])
    assert read_summary(requests[0]) is not None
    write_block(mosaic, 0, 0, np.full((CHUNK, CHUNK), 2, np.uint8), np.ones((CHUNK, CHUNK), np.uint8))
    from geoseg.io.mosaic import mark_done

    mark_done(mosaic, 0, 0)  # the done-state is part of what the parts were made from
    changed = bands.band_requests(mosaic, tmp_path / "parts", select_classes(CLASSES, None), 0.0)
    assert read_summary(changed[0]) is None
    other_area = bands.band_requests(mosaic, tmp_path / "parts", select_classes(CLASSES, None), 5.0)
    assert read_summary(other_area[0]) is None


def test_parts_of_another_band_plan_are_not_reused(tmp_path, monkeypatch):
    """A killed run under one band plan, resumed under another: band i is other rows now."""
    path = class_mosaic(tmp_path)
    clean = vectorize_mosaic(path, tmp_path / "clean", fmt="parquet")

    def killed_after_two(function, arguments):
        for args in arguments[:2]:
            yield function(*args)
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(bands, "plan_bands", lambda height, width, chunk: [(0, 96), (96, 192), (192, 200)])
        with pytest.raises(Killed):
            vectorize_mosaic(path, tmp_path / "v", fmt="parquet", run_tasks=killed_after_two)
    again = vectorize_mosaic(path, tmp_path / "v", fmt="parquet")
    assert again.features == clean.features
    assert again.vectors.read_bytes() == clean.vectors.read_bytes()


def test_ray_tasks_write_what_one_process_writes(tmp_path, ray_local):
    from geoseg.runtime import iter_tasks

    path = class_mosaic(tmp_path)
    one = vectorize_mosaic(path, tmp_path / "one", fmt="parquet", run_tasks=in_process)
    ray = vectorize_mosaic(path, tmp_path / "ray", fmt="parquet", run_tasks=lambda f, a: iter_tasks(f, a, cpus=1))
    assert ray.features == one.features > 100
    assert ray.vectors.read_bytes() == one.vectors.read_bytes()
    assert ray.geojson.read_bytes() == one.geojson.read_bytes()


def _serial_instances(path, tmp_path, min_area_m2):
    """The one-process numbering this replaced: frame, raster, table."""
    mosaic = open_mosaic(path, mode="r+")
    class_ids = select_classes(CLASSES, None)
    frame, numbering, merger = numbered_frame(mosaic, class_ids, 0.0, min_area_m2, None)
    table = write_instance_ids(mosaic, class_ids, merger, numbering, tmp_path / "serial.parquet", None)
    return frame, np.asarray(mosaic.array("instances")[:]), table


@pytest.mark.parametrize(("rows_per_band", "feature_slice"), [(1, 2000), (3, 2000), (7, 2000), (1, 3), (3, 4)])
def test_instance_ids_by_bands_are_the_serial_ids(tmp_path, monkeypatch, rows_per_band, feature_slice):
    """Also with the driver appending each band a few features at a time, joined regions slotted in by id."""
    import pandas as pd

    monkeypatch.setattr(bands, "FEATURE_SLICE", feature_slice)
    monkeypatch.setattr(band_ids, "FEATURE_SLICE", feature_slice)
    path = class_mosaic(tmp_path)
    frame, raster, table = _serial_instances(path, tmp_path, min_area_m2=10.0)
    split = [(r, min(r + rows_per_band * CHUNK, 200)) for r in range(0, 200, rows_per_band * CHUNK)]
    monkeypatch.setattr(bands, "plan_bands", lambda height, width, chunk: split)
    out = vectorize_mosaic(
        path, tmp_path / "v", fmt="parquet", min_area_m2=10.0, instances_table=tmp_path / "t.parquet"
    )
    assert out.instances == out.features == len(table) == len(frame) > 100
    assert np.array_equal(np.asarray(open_mosaic(path).array("instances")[:]), raster)
    got_table = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(got_table.drop(columns="area_m2"), table.drop(columns="area_m2"))
    assert np.allclose(got_table["area_m2"], table["area_m2"], rtol=1e-12, atol=0)
    got = read(out.vectors)
    assert list(got["id"]) == list(range(1, len(got) + 1))  # in id order
    assert list(got["class"]) == list(frame["class"])
    assert shapely.equals(got.geometry.values, frame.geometry.values).all()
    geojson = read(out.geojson)
    assert list(geojson["id"]) == list(got["id"])
    assert list(geojson["class"]) == list(got["class"])


def test_instance_ids_resume_and_match_ray_tasks(tmp_path, ray_local):
    from geoseg.runtime import iter_tasks

    path = class_mosaic(tmp_path)
    clean = vectorize_mosaic(path, tmp_path / "clean", fmt="parquet", instances_table=tmp_path / "clean.parquet")
    clean_raster = np.asarray(open_mosaic(path).array("instances")[:])

    def killed_after_two(function, arguments):
        for args in arguments[:2]:
            yield function(*args)
        raise Killed

    out = tmp_path / "v"
    with pytest.raises(Killed):
        vectorize_mosaic(path, out, fmt="parquet", instances_table=tmp_path / "t.parquet", run_tasks=killed_after_two)
    assert not (tmp_path / "t.parquet").exists()
    redone = []

    def ray_counting(function, arguments):
        if function is vectorize_band:
            redone.extend(request.index for (request,) in arguments if read_summary(request) is None)
        return iter_tasks(function, arguments, cpus=1)

    again = vectorize_mosaic(path, out, fmt="parquet", instances_table=tmp_path / "t.parquet", run_tasks=ray_counting)
    assert redone == [2, 3, 4, 5, 6]
    assert again.vectors.read_bytes() == clean.vectors.read_bytes()
    assert again.geojson.read_bytes() == clean.geojson.read_bytes()
    assert (tmp_path / "t.parquet").read_bytes() == (tmp_path / "clean.parquet").read_bytes()
    assert np.array_equal(np.asarray(open_mosaic(path).array("instances")[:]), clean_raster)
