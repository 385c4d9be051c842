"""SAHI's greedy NMM baseline: box IoS grouping, its merge rules, and its known failures."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.bench.sahi_merge import sahi_boxes, sahi_greedy_nmm
from geoseg.io.masks import InstanceMask, mask_ios


def rect(
    row: int, col: int, h: int, w: int, score: float = 0.9, class_id: int = 1, tile: int = 0, cut: bool = False
) -> InstanceMask:
    """A solid h×w building whose top-left pixel is scene pixel (row, col)."""
    return InstanceMask(
        row=row,
        col=col,
        mask=np.ones((h, w), bool),
        class_id=class_id,
        score=score,
        tile=tile,
        cut=cut,
        window=(0, 0, 1000, 1000),
    )


def scene(instances: list[InstanceMask], shape=(200, 200)) -> np.ndarray:
    """Pixels covered by any of the instances."""
    out = np.zeros(shape, bool)
    for m in instances:
        h, w = m.mask.shape
        out[m.row : m.row + h, m.col : m.col + w] |= m.mask
    return out


def test_boxes_are_sahis_first_to_last_pixel():
    # A mask 31 wide and 11 high has SAHI box [x1, y1, x2, y2] = [20, 5, 50, 15] (inclusive ends).
    assert sahi_boxes([rect(5, 20, 11, 31)]).tolist() == [[20, 5, 50, 15]]


def test_two_tiles_see_the_same_building_once():
    a = rect(40, 40, 20, 30, score=0.8, tile=0)
    b = rect(40, 41, 20, 30, score=0.9, tile=1)  # one pixel to the right in the other tile
    out = sahi_greedy_nmm([a, b])
    assert len(out) == 1
    m = out[0]
    assert (m.row, m.col, m.mask.shape) == (40, 40, (20, 31))
    assert m.mask.all() and m.score == 0.9
    assert (m.tile, m.cut, m.window) == (-1, False, None)


def test_neighbour_inside_an_l_shaped_buildings_box_is_wrongly_merged():
    # SAHI's known failure: boxes, not masks. The L's box contains the small house,
    # so box IoS is 1 although the two masks do not share a pixel.
    l_mask = np.zeros((40, 40), bool)
    l_mask[:, :10] = True
    l_mask[30:, :] = True
    l_shape = InstanceMask(row=0, col=0, mask=l_mask, class_id=1, score=0.9, tile=0)
    house = rect(5, 20, 10, 10, score=0.8, tile=0)
    assert mask_ios(l_shape, house) == 0.0
    out = sahi_greedy_nmm([l_shape, house])
    assert len(out) == 1
    np.testing.assert_array_equal(scene(out), scene([l_shape, house]))
    assert out[0].score == 0.9


def test_building_cut_by_a_tile_edge_merges_with_its_whole_copy_as_the_or_mask():
    # Tile 0 ends at column 100: it sees the left 10 columns of a 30-wide building.
    half = rect(100, 90, 20, 10, score=0.95, tile=0, cut=True)
    whole_mask = np.ones((20, 30), bool)
    whole_mask[5, 2] = False  # a pixel only the half copy has: the OR must bring it back
    whole_mask[7, 25] = False  # a pixel neither has: the OR must leave it out
    whole = InstanceMask(row=100, col=90, mask=whole_mask, class_id=1, score=0.85, tile=1)
    out = sahi_greedy_nmm([half, whole])
    assert len(out) == 1
    m = out[0]
    assert (m.row, m.col, m.mask.shape) == (100, 90, (20, 30))
    expected = np.ones((20, 30), bool)
    expected[7, 25] = False
    np.testing.assert_array_equal(m.mask, expected)
    assert m.score == 0.95 and m.cut is False and m.tile == -1


def test_classes_do_not_merge_unless_class_agnostic():
    a = rect(10, 10, 20, 20, score=0.7, class_id=1)
    b = rect(10, 10, 20, 20, score=0.9, class_id=2)
    aware = sahi_greedy_nmm([a, b])
    assert sorted((m.class_id, m.score) for m in aware) == [(1, 0.7), (2, 0.9)]
    agnostic = sahi_greedy_nmm([a, b], class_agnostic=True)
    assert [(m.class_id, m.score) for m in agnostic] == [(2, 0.9)]


def test_score_is_the_groups_maximum_not_an_average():
    group = [rect(10, 10, 20, 20, score=s, tile=t) for t, s in enumerate([0.6, 0.9, 0.75])]
    out = sahi_greedy_nmm(group)
    assert len(out) == 1 and out[0].score == 0.9


def test_category_on_a_score_tie_comes_from_the_absorbed_prediction():
    # get_merged_category: pred1 (the keep) only wins if its score is strictly higher.
    keep = rect(10, 10, 20, 20, score=0.8, class_id=1, tile=0)  # same box: the first one is visited first
    other = rect(10, 10, 20, 20, score=0.8, class_id=2, tile=1)
    out = sahi_greedy_nmm([keep, other], class_agnostic=True)
    assert [(m.class_id, m.score) for m in out] == [(2, 0.8)]


def test_grouping_is_greedy_not_transitive():
    # A~B and B~C (box IoS 11/19), but A≁C (3/19): C starts its own group.
    a = rect(0, 0, 10, 20, score=0.9)
    b = rect(0, 8, 10, 20, score=0.8)
    c = rect(0, 16, 10, 20, score=0.7)
    out = sahi_greedy_nmm([a, b, c])
    assert sorted((m.col, m.mask.shape[1], m.score) for m in out) == [(0, 28, 0.9), (16, 20, 0.7)]


def test_a_box_matching_two_keeps_joins_only_the_higher_scoring_one():
    a = rect(0, 0, 10, 20, score=0.9)
    c = rect(0, 16, 10, 20, score=0.8)  # A≁C: two keeps
    b = rect(0, 8, 10, 20, score=0.7)  # matches both
    out = sahi_greedy_nmm([a, c, b])
    assert sorted((m.col, m.mask.shape[1], m.score) for m in out) == [(0, 28, 0.9), (16, 20, 0.8)]


def test_absorbed_at_exactly_the_threshold_is_dropped():
    # greedy_nmm absorbs at IoS >= 0.5, has_match merges only at > 0.5: the box is lost.
    keep = rect(0, 0, 11, 11, score=0.9)  # SAHI box 10×10
    lost = rect(0, 5, 11, 31, score=0.8)  # SAHI box 30×10, overlap 5×10 → IoS exactly 0.5
    out = sahi_greedy_nmm([keep, lost])
    assert len(out) == 1
    np.testing.assert_array_equal(scene(out), scene([keep]))


def test_absorbed_box_left_behind_by_the_growing_merge_is_dropped():
    keep = rect(0, 20, 11, 11, score=0.9)  # box x 20..30
    wide = rect(0, 0, 11, 31, score=0.8)  # box x 0..30: IoS 1 with keep
    right = rect(0, 24, 11, 31, score=0.7)  # box x 24..54: IoS 0.6 with keep, 0.2 with keep ∪ wide
    out = sahi_greedy_nmm([keep, wide, right])
    assert len(out) == 1
    np.testing.assert_array_equal(scene(out), scene([keep, wide]))
    assert not scene(out)[:, 31:].any()


def test_masks_sharing_one_pixel_column_do_not_merge():
    # Inclusive boxes x 0..9 and 9..18 meet in a line of zero area.
    out = sahi_greedy_nmm([rect(0, 0, 10, 10, 0.9), rect(0, 9, 10, 10, 0.8)])
    assert len(out) == 2


def test_empty_masks_dropped_and_loose_crops_tightened():
    empty = InstanceMask(row=0, col=0, mask=np.zeros((5, 5), bool))
    loose_mask = np.zeros((30, 30), bool)
    loose_mask[10:20, 5:15] = True
    loose = InstanceMask(row=50, col=50, mask=loose_mask, score=0.5)
    out = sahi_greedy_nmm([empty, loose])
    assert len(out) == 1
    assert (out[0].row, out[0].col, out[0].mask.shape) == (60, 55, (10, 10))


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="match_threshold must be > 0"):
        sahi_greedy_nmm([rect(0, 0, 5, 5)], match_threshold=0)


def test_ten_thousand_detections_four_copies_each():
    # 2500 buildings on a grid, each seen by four overlapping tiles (offset by up to 1 pixel).
    rng = np.random.default_rng(0)
    dets = []
    for i in range(50):
        for j in range(50):
            for t in range(4):
                dy, dx = rng.integers(0, 2, size=2)
                dets.append(rect(i * 20 + int(dy), j * 20 + int(dx), 12, 12, score=float(rng.uniform(0.5, 1)), tile=t))
    out = sahi_greedy_nmm(dets)
    assert len(out) == 2500
    assert all(m.mask.shape in {(12, 12), (12, 13), (13, 12), (13, 13)} for m in out)
