"""The instance mosaic by bands: the whole-scene merge's ids and table for any band split, resumed, and on Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoseg.config.paths import JobPaths
from geoseg.config.schema import InstanceSpec
from geoseg.infer.detect import tile_file
from geoseg.infer.merge import merge_detections, resolve_overlaps, tile_windows
from geoseg.io.instances import InstanceTableWriter
from geoseg.io.masks import save_masks
from geoseg.io.mosaic import UnreadTile, create_mosaic, open_mosaic
from geoseg.io.raster import inspect_scene, read_valid
from geoseg.stages import instance_bands
from geoseg.stages.instance_mosaic import PARTS, write_instance_rows
from geoseg.tiling import plan_tiles
from tests.factories import write_geotiff
from tests.infer.test_merge import HALO, SIZE, TILE, _buildings, _l_shape, _rect, _tile_detections

SETTINGS = InstanceSpec(min_area_px=4)
TILES = plan_tiles(SIZE, SIZE, tile_size=TILE, halo=HALO)  # 5 rows of tiles, cores of 96 px


class Killed(Exception):
    pass


def _scene(root: Path, seed: int, unread_tiles: tuple[int, ...] = ()):
    """A scene with a nodata corner, each read tile's detections on disk, and the tiles that were not read."""
    image = np.full((3, SIZE, SIZE), 100, np.uint8)
    image[:, 350:, :100] = 0
    scene = inspect_scene(write_geotiff(root / "scene.tif", image, nodata=0))
    truth = [*_buildings(seed), _rect(150, 10, 140, 30), _rect(100, 330, 250, 20), _l_shape(300, 300)]
    detections = _tile_detections(truth, rng=np.random.default_rng(seed))
    (root / "detections").mkdir()
    unread = []
    for t in TILES:
        if t.index in unread_tiles:
            unread.append(UnreadTile("scene.tif", t.index, t.row, t.col, t.height, t.width, "damaged"))
        else:
            save_masks(tile_file(root / "detections", t.index), [d for d in detections if d.tile == t.index])
    return scene, [d for d in detections if d.tile not in unread_tiles], unread


def _write(root: Path, name: str, scene, unread, **options):
    mosaic = create_mosaic(
        root / name,
        height=SIZE,
        width=SIZE,
        chunk=TILE - 2 * HALO,
        crs=scene.crs,
        transform=scene.transform,
        class_names=["background", "building"],
    )
    with InstanceTableWriter(root / f"{name}.parquet") as table:
        counts = write_instance_rows(JobPaths(root), TILES, scene, SETTINGS, unread, mosaic, table, **options)
    return counts, np.asarray(open_mosaic(root / name).array("instances")[:]), pd.read_parquet(root / f"{name}.parquet")


def _chunks(mosaic: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(mosaic)): p.read_bytes()
        for name in ("labels", "valid", "instances", "done")
        for p in sorted((mosaic / name).rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("seed", "unread_tiles"), [(0, ()), (1, (7,)), (2, (12, 13))])
def test_any_band_split_writes_the_whole_scene_merge(tmp_path, seed, unread_tiles):
    scene, detections, unread = _scene(tmp_path, seed, unread_tiles)
    read = [t for t in TILES if t.index not in unread_tiles]
    merged = merge_detections(detections, windows=tile_windows(read, SIZE, SIZE), scene_shape=(SIZE, SIZE))
    whole = resolve_overlaps(instance_bands.cut_out(merged, unread), min_area=SETTINGS.min_area_px)
    expected = np.zeros((SIZE, SIZE), np.uint32)
    for number, instance in enumerate(whole, start=1):
        expected[instance.row : instance.bbox[2], instance.col : instance.bbox[3]][instance.mask] = number
    import rasterio

    with rasterio.open(scene.path) as src:
        expected[~read_valid(src, rasterio.windows.Window(0, 0, SIZE, SIZE))] = 0
    first = None
    for rows_per_band in (1, 2, 3):
        counts, ids, table = _write(tmp_path, f"m{rows_per_band}.zarr", scene, unread, rows_per_band=rows_per_band)
        assert (counts.detections, counts.merged, counts.instances) == (len(detections), len(merged), len(whole))
        assert np.array_equal(ids, expected)
        assert list(table["id"]) == list(range(1, len(whole) + 1))
        assert list(table["row_min"]) == [i.row for i in whole] and list(table["area_px"]) == [i.area for i in whole]
        assert not (tmp_path / "detections" / PARTS).exists()  # removed once the outputs are written
        chunks = _chunks(tmp_path / f"m{rows_per_band}.zarr")
        if first is None:
            first = (chunks, table)
        else:  # the same bytes and rows whatever the split
            assert chunks == first[0]
            pd.testing.assert_frame_equal(table, first[1])


def test_a_killed_merge_resumes_at_the_bands_it_had_not_merged(tmp_path, monkeypatch):
    scene, _, unread = _scene(tmp_path, 0)
    clean_counts, clean_ids, clean_table = _write(tmp_path, "clean.zarr", scene, unread, rows_per_band=1)

    def killed_after_two(function, arguments):
        for args in arguments[:2]:
            yield function(*args)
        raise Killed

    with pytest.raises(Killed):
        _write(tmp_path, "killed.zarr", scene, unread, rows_per_band=1, run_tasks=killed_after_two)
    merged = []
    real = instance_bands.merge_band

    def counting(band, *args, **kwargs):
        merged.append(band.index)
        return real(band, *args, **kwargs)

    monkeypatch.setattr(instance_bands, "merge_band", counting)
    counts, ids, table = _write(tmp_path, "again.zarr", scene, unread, rows_per_band=1)
    assert merged == [2, 3, 4]
    assert counts == clean_counts
    assert np.array_equal(ids, clean_ids)
    pd.testing.assert_frame_equal(table, clean_table)


def test_ray_tasks_write_what_one_process_writes(tmp_path, ray_local):
    from geoseg.runtime import iter_tasks

    scene, _, unread = _scene(tmp_path, 1, (7,))
    _write(tmp_path, "one.zarr", scene, unread, rows_per_band=2)
    _write(tmp_path, "ray.zarr", scene, unread, rows_per_band=2, run_tasks=lambda f, a: iter_tasks(f, a, cpus=1))
    assert _chunks(tmp_path / "ray.zarr") == _chunks(tmp_path / "one.zarr")
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ray.zarr.parquet"), pd.read_parquet(tmp_path / "one.zarr.parquet")
    )
