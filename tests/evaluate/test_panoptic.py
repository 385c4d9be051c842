"""Panoptic output: things from an instance mosaic over stuff, pixel by pixel; Panoptic Quality by hand."""

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geoseg.evaluate.panoptic import band_segments, panoptic_quality, reference_ids
from geoseg.io.instances import create_instance_array, table_from_columns, write_instance_table
from geoseg.io.labels import IGNORE
from geoseg.io.masks import InstanceMask
from geoseg.io.mosaic import create_mosaic, open_mosaic, write_block
from geoseg.io.panoptic import (
    PANOPTIC_CLASS,
    PANOPTIC_ID,
    VOID,
    PanopticRequest,
    compose_band,
    create_panoptic_arrays,
    same_grid_problem,
)

CLASSES = ["background", "water", "building"]  # the semantic job's; building is the thing
BUILDING, WATER = 2, 1
GRID = {"crs": CRS.from_epsg(32633), "transform": Affine(0.5, 0, 500000, 0, -0.5, 5000000)}


def _mosaics(tmp_path, scores=(0.9, 0.3, 0.8)):
    """A 24 × 24 semantic mosaic (8-px chunks) and an instance mosaic on its grid with three buildings."""
    semantic = np.zeros((24, 24), np.uint8)
    semantic[:, 16:] = WATER
    semantic[2:6, 2:6] = BUILDING  # found by instance 1 (score 0.9)
    semantic[10:14, 2:6] = BUILDING  # instance 2 has score 0.3: dropped, so these pixels are void
    valid = np.ones((24, 24), np.uint8)
    valid[20:, :4] = 0
    mosaic = create_mosaic(tmp_path / "m.zarr", height=24, width=24, chunk=8, class_names=CLASSES, **GRID)
    for r in range(0, 24, 8):
        for c in range(0, 24, 8):
            write_block(mosaic, r, c, semantic[r : r + 8, c : c + 8], valid[r : r + 8, c : c + 8])
    ids = np.zeros((24, 24), np.uint32)
    ids[1:7, 1:7], ids[10:14, 2:6], ids[6:18, 8:12] = 1, 2, 3  # instance 3 crosses two chunk rows
    things = create_mosaic(
        tmp_path / "t.zarr", height=24, width=24, chunk=8, class_names=["background", "building"], **GRID
    )
    create_instance_array(things)[:] = ids
    boxes = [(1, 1, 7, 7), (10, 2, 14, 6), (6, 8, 18, 12)]
    table = table_from_columns(
        [1, 2, 3], [1, 1, 1], ["background", "building"], list(scores), boxes, [36, 16, 48], 0.25
    )
    write_instance_table(table, tmp_path / "instances.parquet")
    return mosaic, semantic, valid, ids


def _compose(tmp_path, bands):
    mosaic = open_mosaic(tmp_path / "m.zarr", mode="r+")
    create_panoptic_arrays(mosaic, CLASSES)
    for first, stop in bands:
        request = PanopticRequest(
            str(tmp_path / "m.zarr"),
            str(tmp_path / "t.zarr"),
            str(tmp_path / "instances.parquet"),
            (VOID, BUILDING),
            0.5,
            first,
            stop,
        )
        compose_band(request)
    return np.asarray(mosaic.array(PANOPTIC_CLASS)[:]), np.asarray(mosaic.array(PANOPTIC_ID)[:])


def test_things_over_stuff_by_score_void_where_no_thing_was_found(tmp_path):
    _, semantic, valid, ids = _mosaics(tmp_path)
    classes, instance_ids = _compose(tmp_path, [(0, 24)])
    expected = semantic.copy()
    kept = (ids == 1) | (ids == 3)
    expected[kept] = BUILDING  # the instance's class, over water and background alike
    expected[(semantic == BUILDING) & ~kept] = VOID  # instance 2 scored 0.3
    expected[valid == 0] = VOID
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_array_equal(instance_ids, np.where(kept & (valid == 1), ids, 0))
    assert set(np.unique(instance_ids[6:18, 8:12])) == {3}  # one id across the chunk rows


def test_the_arrays_do_not_depend_on_the_band_split(tmp_path):
    _mosaics(tmp_path)
    whole = _compose(tmp_path, [(0, 24)])
    banded = _compose(tmp_path, [(0, 8), (8, 16), (16, 24)])
    for a, b in zip(whole, banded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_another_grid_is_refused_in_one_line(tmp_path):
    mosaic, *_ = _mosaics(tmp_path)
    assert same_grid_problem(mosaic, tmp_path / "t.zarr") is None
    create_mosaic(tmp_path / "o.zarr", height=24, width=16, chunk=8, class_names=CLASSES, **GRID)
    assert "has no 'instances' array" in same_grid_problem(mosaic, tmp_path / "o.zarr")
    other = create_mosaic(tmp_path / "w.zarr", height=24, width=16, chunk=8, class_names=CLASSES, **GRID)
    create_instance_array(other)
    problem = same_grid_problem(mosaic, tmp_path / "w.zarr")
    assert problem.endswith(
        "is not the grid of " + str(tmp_path / "m.zarr") + " (24x24 px in EPSG:32633); predict both from the same scene"
    )


def _pq_by_hand(truth_cls, truth_ids, pred_cls, pred_ids, things):
    """Kirillov et al.'s definition with explicit loops over segments (no shared code)."""
    known = truth_cls != IGNORE

    def segments(cls, ids, kept):
        out = {}
        for c in np.unique(cls[kept]):
            if c == VOID:
                continue
            if c in things:
                for i in np.unique(ids[kept & (cls == c)]):
                    if i:
                        out[("t", int(c), int(i))] = kept & (cls == c) & (ids == i)
            else:
                out[("s", int(c))] = kept & (cls == c)
        return out

    gt, pr = segments(truth_cls, truth_ids, known), segments(pred_cls, pred_ids, known)
    result = {}
    for c in sorted({k[1] for k in gt} | {k[1] for k in pr}):
        g = [k for k in gt if k[1] == c]
        p = [k for k in pr if k[1] == c]
        ious = []
        for a in g:
            for b in p:
                iou = (gt[a] & pr[b]).sum() / (gt[a] | pr[b]).sum()
                if iou > 0.5:
                    ious.append(iou)
        tp = len(ious)
        fp, fn = len(p) - tp, len(g) - tp
        result[c] = sum(ious) / (tp + fp / 2 + fn / 2)
    return result


def test_panoptic_quality_equals_the_definition_by_hand_in_any_band_split():
    rng = np.random.default_rng(0)
    truth_cls = np.zeros((16, 20), np.uint8)
    truth_cls[:, 12:] = WATER
    truth_cls[15, :3] = IGNORE
    truth = [InstanceMask(1, 1, np.ones((4, 4), bool), BUILDING), InstanceMask(8, 4, np.ones((5, 6), bool), BUILDING)]
    truth.append(InstanceMask(2, 14, np.ones((3, 3), bool), BUILDING))  # a building by the water nobody finds
    numbers = reference_ids(enumerate(truth, start=1), 0, 16, 20)
    truth_cls[numbers > 0] = BUILDING
    pred_cls, pred_ids = truth_cls.copy(), np.zeros((16, 20), np.uint32)
    pred_cls[truth_cls == IGNORE] = 0
    pred_cls[numbers == 3] = WATER  # missed
    pred_ids[1:5, 1:4] = 7  # 12 of 16 pixels: IoU 0.75
    pred_cls[1:5, 4] = 0
    pred_ids[8:13, 4:7], pred_ids[8:13, 7:10] = 8, 9  # one building split in two halves: IoU 0.5 each, no match
    pred_cls[0, 0], pred_ids[0, 0] = BUILDING, 10  # a false positive of one pixel
    pred_cls[rng.random((16, 20)) < 0.05] = VOID
    pred_ids[pred_cls != BUILDING] = 0
    things = {BUILDING}
    expected = _pq_by_hand(truth_cls, numbers, pred_cls, pred_ids, things)
    whole = panoptic_quality(band_segments(truth_cls, numbers, pred_cls, pred_ids, things), CLASSES, things)
    assert {CLASSES.index(k): v["pq"] for k, v in whole["per_class"].items()} == pytest.approx(expected)
    assert whole["per_class"]["building"]["tp"] == 1 and whole["per_class"]["building"]["fp"] == 3
    assert whole["per_class"]["building"]["fn"] == 2
    assert whole["pq"] == pytest.approx(np.mean(list(expected.values())))
    assert whole["pq_things"] == pytest.approx(expected[BUILDING])
    parts = band_segments(truth_cls[:7], numbers[:7], pred_cls[:7], pred_ids[:7], things)
    parts.add(band_segments(truth_cls[7:], numbers[7:], pred_cls[7:], pred_ids[7:], things))
    assert panoptic_quality(parts, CLASSES, things) == whole
