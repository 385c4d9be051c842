"""The cross-tile instance merge: one instance per object, none split at a seam, neighbours kept apart."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.evaluate.instances import count_duplicates, count_merged, count_splits, match_instances
from geoseg.infer.detect import detections_to_masks
from geoseg.infer.merge import first_pixel, merge_detections, resolve_overlaps, tile_windows
from geoseg.io.masks import InstanceMask, load_masks, mask_iou, save_masks, tight
from geoseg.tiling import plan_tiles

SIZE, TILE, HALO = 400, 160, 32  # cores of 96 px, neighbours overlap by 64 px


def _rect(row, col, h, w, class_id=1) -> InstanceMask:
    return InstanceMask(row, col, np.ones((h, w), bool), class_id)


def _l_shape(row, col) -> InstanceMask:
    mask = np.zeros((50, 50), bool)
    mask[:20, :] = True
    mask[:, :20] = True
    return InstanceMask(row, col, mask)


def _buildings(seed: int = 0) -> list[InstanceMask]:
    """A grid of rectangles up to 48 px (less than the 64-px overlap), 3+ px apart, many crossing seams."""
    rng = np.random.default_rng(seed)
    out = []
    for row in range(4, SIZE - 50, 52):
        for col in range(4, SIZE - 50, 52):
            h, w = (int(v) for v in rng.integers(10, 49, 2))
            out.append(_rect(row, col, h, w))
    return out


def _paint(instances, shape=(SIZE, SIZE)) -> np.ndarray:
    ids = np.zeros(shape, np.int32)
    for k, inst in enumerate(instances, start=1):
        r0, c0, r1, c1 = inst.bbox
        ids[r0:r1, c0:c1][inst.mask] = k
    return ids


def _tile_detections(truth, *, rng, jitter: bool = True) -> list[InstanceMask]:
    """What a good detector returns per tile: each object as far as the tile window sees it.

    The views differ a little between tiles (a pixel row more or less, another
    score), as real detections of the same object from two tiles do.
    """
    ids = _paint(truth)
    out = []
    for tile in plan_tiles(SIZE, SIZE, tile_size=TILE, halo=HALO):
        top, left = tile.row - tile.halo, tile.col - tile.halo
        window = (top, left, top + tile.size, left + tile.size)
        r0, c0 = max(top, 0), max(left, 0)
        crop = ids[r0 : min(top + tile.size, SIZE), c0 : min(left + tile.size, SIZE)]
        n = len(truth)
        masks = np.zeros((n, 1, tile.size, tile.size), np.float32)
        present = [v for v in np.unique(crop) if v]
        for k, value in enumerate(present):
            view = crop == value
            if jitter and rng.random() < 0.5 and view.sum() > 40:  # drop the object's last row in this view
                rows = np.flatnonzero(view.any(axis=1))
                view[rows[-1]] = False
            masks[k, 0, r0 - top : r0 - top + crop.shape[0], c0 - left : c0 - left + crop.shape[1]] = view
        output = {
            "scores": _t(rng.uniform(0.6, 1.0, len(present))),
            "labels": _t(np.ones(len(present), np.int64)),
            "masks": _t(masks[: len(present)]),
            "boxes": _t(np.zeros((len(present), 4), np.float32)),
        }
        out.extend(
            detections_to_masks(
                output, row_off=top, col_off=left, window=window, scene_shape=(SIZE, SIZE), tile=tile.index, min_area=1
            )
        )
    return out


def _t(array):
    import torch

    return torch.from_numpy(np.asarray(array))


def test_every_object_comes_out_once_and_whole():
    truth = _buildings()
    detections = _tile_detections(truth, rng=np.random.default_rng(1))
    assert len(detections) > 2 * len(truth)  # objects near seams are seen by 2-4 tiles
    assert any(d.cut for d in detections)
    merged = resolve_overlaps(merge_detections(detections), min_area=1)
    assert len(merged) == len(truth)
    assert count_splits(merged, truth) == 0
    assert count_duplicates(merged) == 0
    assert count_merged(merged, truth) == 0
    result = match_instances(merged, truth, iou=0.5)
    assert (result["tp"], result["fp"], result["fn"]) == (len(truth), 0, 0)
    # The whole view wins over a cut one: every object is smaller than the overlap, so no kept view is cut.
    assert not any(m.cut for m in merged)
    assert min(mask_iou(m, t) for m, t in zip(merged, sorted(truth, key=first_pixel), strict=True)) >= 0.85


def test_the_result_does_not_depend_on_tile_order():
    detections = _tile_detections(_buildings(), rng=np.random.default_rng(2))
    first = resolve_overlaps(merge_detections(detections), min_area=1)
    shuffled = list(detections)
    np.random.default_rng(3).shuffle(shuffled)
    second = resolve_overlaps(merge_detections(shuffled), min_area=1)
    assert [(m.bbox, m.score) for m in first] == [(m.bbox, m.score) for m in second]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(first, second, strict=True))


def test_neighbours_whose_boxes_overlap_stay_apart():
    # A small building in the crook of an L-shaped one: their boxes overlap, their masks do not.
    truth = [_l_shape(84, 84), _rect(110, 110, 20, 20)]
    detections = _tile_detections(truth, rng=np.random.default_rng(4), jitter=False)
    merged = resolve_overlaps(merge_detections(detections), min_area=1)
    assert len(merged) == 2
    assert count_merged(merged, truth) == 0


def test_an_object_larger_than_the_overlap_is_stitched_from_its_pieces():
    truth = [_rect(20, 20, 30, 300)]  # 300 px long: no tile sees it whole
    detections = _tile_detections(truth, rng=np.random.default_rng(5), jitter=False)
    assert all(d.cut for d in detections)
    merged = resolve_overlaps(merge_detections(detections), min_area=1)
    assert len(merged) == 1
    assert mask_iou(merged[0], truth[0]) == 1.0


def test_a_cut_piece_defers_to_the_tile_that_saw_its_area_whole():
    # Tile 0 sees the whole L-shaped building but finds only its body; tile 1 sees the wing, cut by its edge.
    body = InstanceMask(100, 40, np.ones((20, 50), bool), score=0.9, tile=0, window=(0, 0, 200, 200))
    wing = InstanceMask(130, 70, np.ones((20, 20), bool), score=0.8, tile=1, cut=True, window=(130, 0, 330, 200))
    windows = {0: (0, 0, 200, 200), 1: (130, 0, 330, 200)}
    assert len(merge_detections([body, wing])) == 2  # no mask overlap: no match
    kept = merge_detections([body, wing], windows=windows, scene_shape=(330, 200))
    assert kept == [body]  # tile 0 saw the wing's area with room around it and found no building there
    # A piece of an object no tile saw whole (larger than the overlap) stays.
    far = InstanceMask(190, 70, np.ones((20, 20), bool), score=0.8, tile=1, cut=True, window=(130, 0, 330, 200))
    assert far in merge_detections([body, far], windows=windows, scene_shape=(330, 200))


def test_detections_are_clipped_to_the_scene_and_flagged_cut_only_at_inner_edges():
    prob = np.zeros((2, 1, 64, 64), np.float32)
    prob[0, 0, 0:10, 20:30] = 0.9  # touches the window's top edge, which is the scene edge: not cut
    prob[1, 0, 30:40, 54:64] = 0.9  # touches the right edge, inside the scene: cut
    output = {"scores": _t([0.9, 0.8]), "labels": _t([1, 1]), "masks": _t(prob), "boxes": _t(np.zeros((2, 4)))}
    found = detections_to_masks(
        output, row_off=-8, col_off=0, window=(-8, 0, 56, 64), scene_shape=(100, 100), min_area=1
    )
    assert [d.cut for d in found] == [False, True]
    assert found[0].bbox == (0, 20, 2, 30)  # rows -8..-1 are the mirrored margin: dropped


def test_a_detection_below_the_score_threshold_is_dropped():
    prob = np.zeros((1, 1, 32, 32), np.float32)
    prob[0, 0, 5:15, 5:15] = 1.0
    output = {"scores": _t([0.3]), "labels": _t([1]), "masks": _t(prob), "boxes": _t(np.zeros((1, 4)))}
    assert detections_to_masks(output, row_off=0, col_off=0, window=(0, 0, 32, 32), scene_shape=(32, 32)) == []


def test_overlapping_results_give_pixels_to_the_more_confident():
    a = InstanceMask(0, 0, np.ones((10, 10), bool), score=0.9)
    b = InstanceMask(0, 8, np.ones((10, 10), bool), score=0.8)  # loses 2 columns, keeps 80%
    c = InstanceMask(0, 1, np.ones((10, 10), bool), score=0.7)  # would keep 10%: a duplicate, dropped
    out = resolve_overlaps([c, b, a], min_area=1)
    assert [m.bbox for m in out] == [(0, 0, 10, 10), (0, 10, 10, 18)]
    ids = _paint(out, (20, 20))
    assert set(np.unique(ids)) == {0, 1, 2}


def test_masks_round_trip_through_files(tmp_path):
    masks = [
        InstanceMask(
            3, 4, np.random.default_rng(0).random((5, 7)) > 0.5, 2, 0.75, tile=3, cut=True, window=(0, 0, 10, 10)
        )
    ]
    save_masks(tmp_path / "t.npz", masks)
    back = load_masks(tmp_path / "t.npz")
    assert np.array_equal(back[0].mask, masks[0].mask)
    assert (back[0].row, back[0].col, back[0].class_id, back[0].tile, back[0].cut, back[0].window) == (
        3,
        4,
        2,
        3,
        True,
        (0, 0, 10, 10),
    )
    assert tight(InstanceMask(0, 0, np.zeros((3, 3), bool))) is None


def _oracle_tile_detections(ids: np.ndarray, *, tile_size: int, halo: int, rng) -> list[InstanceMask]:
    """Every tile's view of every object in ``ids``, with soft borders: one pixel grown or shrunk at random."""
    from scipy import ndimage

    height, width = ids.shape
    out = []
    for tile in plan_tiles(height, width, tile_size=tile_size, halo=halo):
        top, left = tile.row - tile.halo, tile.col - tile.halo
        r0, c0 = max(top, 0), max(left, 0)
        crop = ids[r0 : min(top + tile_size, height), c0 : min(left + tile_size, width)]
        present = [v for v in np.unique(crop) if v]
        masks = np.zeros((len(present), 1, tile_size, tile_size), np.float32)
        for k, value in enumerate(present):
            view = crop == value
            pick = rng.random()
            if pick < 0.25:
                view = ndimage.binary_erosion(view) if view.sum() > 60 else view
            elif pick < 0.5:
                view = ndimage.binary_dilation(view) & (crop == 0) | view
            masks[k, 0, r0 - top : r0 - top + crop.shape[0], c0 - left : c0 - left + crop.shape[1]] = view
        output = {
            "scores": _t(rng.uniform(0.5, 1.0, len(present)).astype(np.float32)),
            "labels": _t(np.ones(len(present), np.int64)),
            "masks": _t(masks),
            "boxes": _t(np.zeros((len(present), 4), np.float32)),
        }
        out.extend(
            detections_to_masks(
                output,
                row_off=top,
                col_off=left,
                window=(top, left, top + tile_size, left + tile_size),
                scene_shape=(height, width),
                tile=tile.index,
                min_area=16,
            )
        )
    return out


@pytest.mark.long  # 20 s on 2 cores: CI's test-long runs it
def test_demo_survey_buildings_come_out_once_each_with_the_demo_tiling():
    """The demo survey scene's 2,500 buildings (L-shapes, rows of houses, up to 116 px), seen per tile
    with the building job's tiling (512 px, halo 64: tiles overlap by 128 px, more than any building)
    by a detector that is right up to a pixel of border: no building is split or duplicated."""
    from rasterio.features import rasterize
    from scipy import ndimage

    from geoseg.synthetic.layout import make_layout

    layout = make_layout(4096, np.random.default_rng(8).spawn(3)[0])  # the survey scene (seed 7 + 1)
    buildings = [o.geom for o in layout if o.cls == "building"]
    assert len(buildings) > 2000
    ids = rasterize([(g, k) for k, g in enumerate(buildings, start=1)], out_shape=(4096, 4096), dtype="int32")
    truth = []
    for k, sl in enumerate(ndimage.find_objects(ids), start=1):
        if sl is not None:
            truth.append(InstanceMask(sl[0].start, sl[1].start, ids[sl] == k))
    detections = _oracle_tile_detections(ids, tile_size=512, halo=64, rng=np.random.default_rng(0))
    assert sum(d.cut for d in detections) > 500  # plenty of buildings cross tile edges
    merged = merge_detections(
        detections,
        windows=tile_windows(plan_tiles(4096, 4096, tile_size=512, halo=64), 4096, 4096),
        scene_shape=(4096, 4096),
    )
    final = resolve_overlaps(merged, min_area=16)
    for result in (merged, final):
        assert count_duplicates(result) == 0
        assert count_splits(result, truth) == 0
        assert count_merged(result, truth) == 0
    match = match_instances(final, truth, iou=0.5)
    assert match["fn"] == 0 and match["fp"] == 0
