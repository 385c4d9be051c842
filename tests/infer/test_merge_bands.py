"""The merge by bands of tile rows gives the whole-scene merge's instances, in the same order, for any band split."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.infer.merge import TOUCH, first_pixel, merge_detections, resolve_overlaps, tile_windows
from geoseg.infer.merge_bands import BandJoiner, band_windows, merge_band, plan_merge_bands, rows_per_band
from geoseg.io.masks import InstanceMask
from geoseg.tiling import plan_tiles
from tests.infer.test_merge import HALO, SIZE, TILE, _buildings, _l_shape, _rect, _tile_detections
from tests.infer.test_merge_rows import _key

TILES = plan_tiles(SIZE, SIZE, tile_size=TILE, halo=HALO)  # 5 rows of tiles, cores of 96 px


def _truth(seed: int) -> list[InstanceMask]:
    # Taller than a core (140 px) and than two cores (250 px): taller than bands of 1 and 2 tile rows.
    return [*_buildings(seed), _rect(150, 10, 140, 30), _rect(100, 330, 250, 20), _l_shape(300, 300)]


def _whole(detections):
    windows = tile_windows(TILES, SIZE, SIZE)
    merged = merge_detections(detections, windows=windows, scene_shape=(SIZE, SIZE))
    return merged, resolve_overlaps(merged, min_area=1)


def _banded(detections, rows_per_band: int):
    """Each band merged alone (its own windows only), then the open detections joined band by band."""
    windows = tile_windows(TILES, SIZE, SIZE)
    row_of = {t.index: t.row for t in TILES}
    joiner = BandJoiner(windows, (SIZE, SIZE), iou=0.5, ios=0.7, min_area=1)
    finals, merged, held = [], 0, []
    for band in plan_merge_bands(TILES, SIZE, rows_per_band):
        rows = [[d for d in detections if row_of[d.tile] == row] for row in band.rows]
        result = merge_band(band, iter(rows), band_windows(windows, band), (SIZE, SIZE), iou=0.5, ios=0.7, min_area=1)
        assert all(band.top <= i.row and i.bbox[2] <= band.bottom for i in result.closed)
        assert [first_pixel(i) for i in result.closed] == sorted(first_pixel(i) for i in result.closed)
        finals += result.closed
        merged += result.merged
        finals += joiner.add_band(band, result.open)
        held.append(len(joiner.open))
    assert joiner.open == []
    return finals, merged + joiner.merged, held


@pytest.mark.parametrize("rows_per_band", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bands_give_the_whole_scene_merge(seed, rows_per_band):
    detections = _tile_detections(_truth(seed), rng=np.random.default_rng(seed))
    merged, whole = _whole(detections)
    finals, count, held = _banded(detections, rows_per_band)
    assert count == len(merged)
    assert [_key(i) for i in sorted(finals, key=first_pixel)] == [_key(i) for i in whole]
    if rows_per_band < 5:
        assert max(held) < len(detections) / 2  # the join holds only what is near a seam


def test_the_plan_reaches_as_far_as_the_windows():
    bands = plan_merge_bands(TILES, SIZE, 2)
    assert [b.rows for b in bands] == [(0, 96), (192, 288), (384,)]
    assert [b.next_tops for b in bands] == [(64, 160), (256, 352), (None,)]
    # The band above's last window ends at 96 + 32 + 96 (its core end plus the halo): its reach adds 2 * TOUCH.
    assert [b.top_reach for b in bands] == [None, 224 + 2 * TOUCH, 400 + 2 * TOUCH]
    assert [(b.top, b.bottom) for b in bands] == [(0, 224), (160, 400), (352, 400)]
    assert plan_merge_bands(TILES, SIZE, 9)[0].rows == (0, 96, 192, 288, 384)
    with pytest.raises(ValueError, match="at least 1"):
        plan_merge_bands(TILES, SIZE, 0)


def test_bands_hold_several_rows_where_the_scene_has_enough():
    # At least 8 bands while rows allow, at most 4 rows each: from the tiling alone, never the workers.
    assert [rows_per_band(rows) for rows in (1, 5, 8, 9, 16, 17, 32, 500)] == [1, 1, 1, 2, 2, 3, 4, 4]


def test_a_component_near_the_band_above_is_left_open():
    tiles = plan_tiles(200, 100, tile_size=100, halo=20)  # cores of 60 px: rows 0, 60, 120, 180
    windows = tile_windows(tiles, 200, 100)
    second = plan_merge_bands(tiles, 200, 2)[1]  # rows 120 and 180; the band above's windows end at 140
    assert second.top_reach == 140 + 2 * TOUCH
    near = InstanceMask(143, 10, np.ones((10, 10), bool), tile=4, window=windows[4])
    clear = InstanceMask(144, 40, np.ones((10, 10), bool), tile=4, window=windows[4])
    result = merge_band(second, [[near, clear], []], windows, (200, 100), iou=0.5, ios=0.7, min_area=1)
    assert [i.bbox for i in result.closed] == [clear.bbox]
    assert result.open == [near] and result.merged == 1
