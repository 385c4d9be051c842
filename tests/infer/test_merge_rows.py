"""The merge row of tiles by row of tiles gives the whole-scene merge's instances, in the same order."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.infer.merge import first_pixel, merge_detections, resolve_overlaps, tile_windows
from geoseg.infer.merge_rows import RowMerger
from geoseg.io.masks import InstanceMask
from geoseg.tiling import plan_tiles
from tests.infer.test_merge import HALO, SIZE, TILE, _buildings, _l_shape, _rect, _tile_detections


def _rows(detections, tiles):
    rows = sorted({t.row for t in tiles})
    by_tile = {t.index: t.row for t in tiles}
    return [(row, [d for d in detections if by_tile[d.tile] == row]) for row in rows]


def _key(instance: InstanceMask) -> tuple:
    return (*instance.bbox, instance.class_id, round(instance.score, 6), instance.mask.tobytes())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_give_the_whole_scene_merge(seed):
    truth = [*_buildings(seed), _rect(150, 10, 140, 30), _l_shape(300, 300)]  # one taller than a core
    tiles = plan_tiles(SIZE, SIZE, tile_size=TILE, halo=HALO)
    detections = _tile_detections(truth, rng=np.random.default_rng(seed))
    windows = tile_windows(tiles, SIZE, SIZE)
    merged = merge_detections(detections, windows=windows, scene_shape=(SIZE, SIZE))
    whole = resolve_overlaps(merged, min_area=1)

    merger = RowMerger(windows, (SIZE, SIZE), iou=0.5, ios=0.7, min_area=1)
    rows = _rows(detections, tiles)
    finals, held = [], []
    for k, (_, row_detections) in enumerate(rows):
        next_top = max(rows[k + 1][0] - HALO, 0) if k + 1 < len(rows) else None
        finals += merger.add_row(row_detections, next_top)
        held.append(len(merger.open))
    assert merger.open == []
    assert merger.merged == len(merged)
    assert sorted(map(_key, finals)) == sorted(map(_key, whole))
    assert [_key(i) for i in sorted(finals, key=first_pixel)] == [_key(i) for i in whole]
    assert max(held) < len(detections) / 2  # only detections near the current row are held


def test_a_component_stays_open_while_a_later_row_can_reach_it():
    windows = {0: (0, 0, 100, 100), 1: (60, 0, 160, 100)}
    merger = RowMerger(windows, (160, 100), iou=0.5, ios=0.7, min_area=1)
    low = InstanceMask(50, 10, np.ones((10, 10), bool), tile=0, window=windows[0])
    high = InstanceMask(10, 50, np.ones((10, 10), bool), tile=0, window=windows[0])
    assert [i.bbox for i in merger.add_row([low, high], next_top=60)] == [high.bbox]  # low ends at 60: open
    assert merger.open == [low]
    assert [i.bbox for i in merger.add_row([], next_top=None)] == [low.bbox]
