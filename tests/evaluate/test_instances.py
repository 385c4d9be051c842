"""Instance metrics: matching, error counts, COCO mask AP, and reading both sides."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from pycocotools import mask as mask_utils
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely.geometry import Polygon, box

from geoseg.evaluate.coco import _coco_eval, coco_mask_ap, coco_rle
from geoseg.evaluate.instances import (
    count_duplicates,
    count_merged,
    count_splits,
    instance_report,
    match_instances,
    mosaic_instances,
    truth_instances,
)
from geoseg.io.instances import create_instance_array, table_from_columns
from geoseg.io.masks import InstanceMask, tight
from geoseg.io.mosaic import create_mosaic

ORIGIN = Affine(0.5, 0, 500000.0, 0, -0.5, 5000000.0)


def to_map(col: float, row: float) -> tuple[float, float]:
    return ORIGIN.c + col * ORIGIN.a, ORIGIN.f + row * ORIGIN.e


def rect(row, col, h, w, class_id=1, score=1.0) -> InstanceMask:
    return InstanceMask(row=row, col=col, mask=np.ones((h, w), bool), class_id=class_id, score=score)


def full(instance: InstanceMask, height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), bool)
    r0, c0, r1, c1 = instance.bbox
    out[r0:r1, c0:c1] = instance.mask
    return out


def buildings(n_rows=3, n_cols=4, size=8, gap=4) -> list[InstanceMask]:
    return [
        rect(gap + i * (size + gap), gap + j * (size + gap), size, size, score=0.5 + 0.01 * (i * n_cols + j))
        for i in range(n_rows)
        for j in range(n_cols)
    ]


def test_perfect_prediction_scores_one():
    truth = buildings()
    pred = [InstanceMask(row=m.row, col=m.col, mask=m.mask.copy(), score=m.score) for m in truth]
    report = instance_report(pred, truth, 60, 60)
    assert (report["tp"], report["fp"], report["fn"]) == (len(truth), 0, 0)
    assert report["f1"] == report["precision"] == report["recall"] == report["mean_iou"] == 1.0
    assert report["ap"] == report["ap50"] == report["ap75"] == pytest.approx(1.0)
    assert report["splits"] == report["duplicates"] == report["merged"] == 0


def test_shifted_mask_below_half_iou_is_a_false_positive_and_a_miss():
    truth = [rect(10, 10, 10, 10)]
    near = match_instances([rect(10, 13, 10, 10)], truth)  # IoU 70/130 = 0.54
    far = match_instances([rect(10, 14, 10, 10)], truth)  # IoU 60/140 = 0.43
    assert (near["tp"], near["fp"], near["fn"]) == (1, 0, 0) and near["mean_iou"] == pytest.approx(70 / 130)
    assert (far["tp"], far["fp"], far["fn"]) == (0, 1, 1)
    assert far["precision"] == far["recall"] == far["f1"] == 0.0 and far["mean_iou"] is None
    assert coco_mask_ap([rect(10, 14, 10, 10)], truth, 40, 40)["ap50"] == 0.0


def test_matching_is_one_to_one_by_best_iou_and_by_class():
    truth = [rect(0, 0, 10, 10)]
    pred = [rect(0, 1, 10, 10), rect(0, 0, 10, 10)]  # the exact one wins; the other is a false positive
    assert match_instances(pred, truth)["mean_iou"] == 1.0
    assert (match_instances(pred, truth)["tp"], match_instances(pred, truth)["fp"]) == (1, 1)
    other_class = [rect(0, 0, 10, 10, class_id=2)]
    assert match_instances(other_class, truth)["tp"] == 0
    assert match_instances(other_class, truth, by_class=False)["tp"] == 1


def test_empty_sides_give_none_not_errors():
    truth = [rect(0, 0, 4, 4)]
    assert match_instances([], [])["f1"] is None
    nothing = match_instances([], truth)
    assert nothing["precision"] is None and nothing["recall"] == 0.0 and nothing["f1"] == 0.0
    assert match_instances(truth, [])["recall"] is None
    assert coco_mask_ap([], truth, 8, 8)["ap"] == 0.0 and coco_mask_ap(truth, [], 8, 8)["ap"] is None
    assert instance_report([], [], 8, 8)["count_pred"] == 0


def test_truth_cut_in_two_halves_is_one_split():
    truth = [rect(0, 0, 10, 10), rect(0, 20, 10, 10)]
    pred = [rect(0, 0, 10, 5), rect(0, 5, 10, 5), rect(0, 20, 10, 10)]
    assert count_splits(pred, truth) == 1
    assert count_splits(pred[:1] + pred[2:], truth) == 0


def test_two_identical_predictions_are_one_duplicate():
    pred = [rect(5, 5, 10, 10), rect(5, 5, 10, 10), rect(5, 30, 10, 10)]
    assert count_duplicates(pred) == 1
    assert count_duplicates([pred[0], rect(5, 12, 10, 10)]) == 0  # IoU 30/170


def test_one_prediction_over_two_neighbours_is_one_merge():
    truth = [rect(0, 0, 10, 10), rect(0, 12, 10, 10), rect(30, 0, 10, 10)]
    assert count_merged([rect(0, 0, 10, 22)], truth) == 1
    assert count_merged([rect(0, 0, 10, 15)], truth) == 0  # holds only 3/10 of the second
    assert count_merged([rect(0, 0, 10, 10), rect(0, 12, 10, 10)], truth) == 0


@pytest.mark.parametrize("seed", range(4))
def test_rle_equals_pycocotools_encode(seed):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(5, 40)), int(rng.integers(5, 40))
    cases = [(0, 0, height, width), (0, width - 3, height, 3), (height - 1, width - 1, 1, 1)]  # edges, full height
    for _ in range(10):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        cases.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
    for row, col, h, w in cases:
        for density in (0.3, 0.9, 1.0, 0.0):
            m = InstanceMask(row=row + 7, col=col + 3, mask=rng.random((h, w)) < density)
            ours = coco_rle(m, height, width, origin=(7, 3))
            shifted = InstanceMask(row=row, col=col, mask=m.mask)
            theirs = mask_utils.encode(np.asfortranarray(full(shifted, height, width).astype(np.uint8)))
            assert ours == theirs, (row, col, h, w, density)


def test_rle_refuses_an_instance_outside_the_image():
    with pytest.raises(ValueError, match="outside"):
        coco_rle(rect(5, 5, 4, 4), 8, 8)


def test_ap_ranks_by_score_and_counts_more_than_100_detections():
    truth = [rect(0, 0, 10, 10)]
    high_fp = [rect(30, 30, 5, 5, score=0.9), rect(0, 0, 10, 10, score=0.8)]
    assert coco_mask_ap(high_fp, truth, 40, 40)["ap50"] == pytest.approx(0.5)
    assert coco_mask_ap([*high_fp[::-1][:1], rect(30, 30, 5, 5, score=0.1)], truth, 40, 40)["ap50"] == pytest.approx(1)
    # 150 references in one group (a big low-score false positive spans them): COCO's default
    # maxDets=100 would stop recall at 100/150.
    many = [rect(0, 3 * k, 2, 2) for k in range(150)]
    pred = [InstanceMask(row=m.row, col=m.col, mask=m.mask, score=0.5 + k / 1000) for k, m in enumerate(many)]
    pred.append(rect(0, 0, 3, 450, score=0.01))
    assert coco_mask_ap(pred, many, 3, 450)["ap"] == pytest.approx(1.0)


def test_grouped_ap_equals_one_image_ap():
    rng = np.random.default_rng(3)
    height, width = 80, 90

    def blobs(n, class_ids):
        out = []
        for _ in range(n):
            h, w = rng.integers(3, 15, size=2)
            m = InstanceMask(
                row=int(rng.integers(0, height - h)),
                col=int(rng.integers(0, width - w)),
                mask=rng.random((h, w)) < 0.8,
                class_id=int(rng.choice(class_ids)),
                score=float(rng.random()),
            )
            out.append(tight(m))
        return [m for m in out if m is not None]

    truth = blobs(40, [1, 2])
    pred = [
        tight(
            InstanceMask(
                row=m.row,
                col=m.col,
                mask=m.mask & (rng.random(m.mask.shape) < 0.85),
                class_id=m.class_id,
                score=float(rng.random()),
            )
        )
        for m in truth[:30]
    ]
    pred = [m for m in pred if m is not None] + blobs(15, [1, 2, 3])
    grouped = coco_mask_ap(pred, truth, height, width)
    images = [{"id": 1, "height": height, "width": width}]
    truth_anns = [
        {
            "id": n + 1,
            "image_id": 1,
            "category_id": m.class_id,
            "area": m.area,
            "iscrowd": 0,
            "segmentation": coco_rle(m, height, width),
        }
        for n, m in enumerate(truth)
    ]
    pred_anns = [
        {"image_id": 1, "category_id": m.class_id, "score": m.score, "segmentation": coco_rle(m, height, width)}
        for m in pred
    ]
    single = _coco_eval(images, truth_anns, pred_anns, max(100, len(pred)))
    assert 0.2 < grouped["ap50"] < 1.0
    assert grouped == pytest.approx(single)


def test_truth_instances_equal_rasterize_of_each_polygon():
    height, width = 40, 50
    rng = np.random.default_rng(0)
    polygons = []
    for _ in range(8):  # random convex-ish pentagons, vertices off the pixel grid
        cx, cy = rng.uniform(-5, width + 5), rng.uniform(-5, height + 5)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 5))
        radius = rng.uniform(1.5, 9)
        polygons.append(Polygon([to_map(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]))
    polygons += [
        box(*to_map(60, 50), *to_map(70, 45)),  # outside the scene
        box(*to_map(10.1, 10.4), *to_map(10.4, 10.1)),  # covers no pixel centre
        box(*to_map(2, 20), *to_map(12, 10)),
    ]  # on pixel edges
    frame = gpd.GeoDataFrame({"class_id": [1, 2] * 5 + [1]}, geometry=polygons, crs="EPSG:32633")
    got = truth_instances(frame, ORIGIN, height, width)
    expected = [
        rasterize([(g, 1)], out_shape=(height, width), transform=ORIGIN, fill=0, all_touched=False) > 0
        for g in polygons
    ]
    kept = [(e, c) for e, c in zip(expected, frame.class_id, strict=True) if e.any()]
    assert 3 < len(kept) == len(got) <= len(polygons) - 2
    for m, (e, class_id) in zip(got, kept, strict=True):
        assert (full(m, height, width) == e).all() and m.class_id == class_id and m.score == 1.0
        assert tight(m) is m

    only_two = truth_instances(frame, ORIGIN, height, width, class_ids=[2])
    assert len(only_two) == sum(c == 2 for _, c in kept) and {m.class_id for m in only_two} == {2}

    left_half = truth_instances(
        frame,
        ORIGIN,
        height,
        width,
        valid=lambda w: np.broadcast_to(np.arange(w[1], w[3]) < 25, (w[2] - w[0], w[3] - w[1])),
    )
    assert all(m.bbox[3] <= 25 for m in left_half)
    assert len(left_half) == sum(bool(e[:, :25].any()) for e, _ in kept)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_mosaic_instances_round_trip(tmp_path, zarr_format):
    height, width, chunk = 70, 90, 32
    rng = np.random.default_rng(zarr_format)
    ids = np.zeros((height, width), np.uint32)
    expected = []
    # Interleaved blobs whose boxes overlap and cross chunk edges; the id picks each one's pixels.
    for k, (row, col, h, w) in enumerate(
        [(2, 2, 10, 10), (25, 25, 20, 50), (30, 20, 35, 12), (60, 80, 10, 10), (0, 60, 5, 30), (40, 40, 3, 3)]
    ):
        mask = (rng.random((h, w)) < 0.7) & (ids[row : row + h, col : col + w] == 0)
        ids[row : row + h, col : col + w][mask] = k + 1
        expected.append(InstanceMask(row=row, col=col, mask=mask, class_id=1 + k % 2, score=0.1 * k))
    expected = [
        tight(
            InstanceMask(
                row=m.row,
                col=m.col,
                mask=ids[m.bbox[0] : m.bbox[2], m.bbox[1] : m.bbox[3]] == k + 1,
                class_id=m.class_id,
                score=m.score,
            )
        )
        for k, m in enumerate(expected)
    ]
    assert (
        sum(
            r0 // chunk != (r1 - 1) // chunk or c0 // chunk != (c1 - 1) // chunk
            for r0, c0, r1, c1 in (m.bbox for m in expected)
        )
        >= 3
    )  # cross chunk edges
    mosaic = create_mosaic(
        tmp_path / "m.zarr",
        height=height,
        width=width,
        chunk=chunk,
        crs=CRS.from_epsg(32633),
        transform=ORIGIN,
        class_names=["bg", "a", "b"],
        zarr_format=zarr_format,
    )
    create_instance_array(mosaic)[:] = ids
    scores = [m.score for m in expected]
    scores[0] = float("nan")
    table = table_from_columns(
        range(1, len(expected) + 1),
        [m.class_id for m in expected],
        mosaic.class_names,
        scores,
        [m.bbox for m in expected],
        [m.area for m in expected],
        0.25,
    )
    got = mosaic_instances(tmp_path / "m.zarr", table)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.bbox == e.bbox and (g.mask == e.mask).all() and g.class_id == e.class_id
    assert got[0].score == 1.0 and got[2].score == pytest.approx(0.2)
    report = instance_report(got, expected, height, width)
    assert report["f1"] == 1.0 and report["ap"] == pytest.approx(1.0)
