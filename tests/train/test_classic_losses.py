"""The classic losses against values worked out by hand on a 1×2×3×3 tensor, independently of the implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from geoseg.errors import JobConfigError
from geoseg.io.labels import IGNORE
from geoseg.job import load_job
from geoseg.train.classic_losses import TopKCrossEntropy, class_distances
from geoseg.train.losses import LOSSES, build_loss
from tests.factories import tiny_job, tiny_scene

CLASSIC = ("topk", "boundary", "hausdorff", "sensitivity_specificity", "iou_balanced", "distance_ce")
R2 = math.sqrt(2.0)

# Labels: class 0 on the left, class 1 on the right, the bottom-right pixel no data.
LABELS = np.array([[0, 0, 1], [0, 1, 1], [0, 1, IGNORE]])
VALID = LABELS != IGNORE
Y = np.stack([np.equal(LABELS, c) & VALID for c in (0, 1)]).astype(float)  # one-hot, 0 on the ignored pixel
# Logits; their argmax is class 0 at (0,0), (0,1), (2,0) and class 1 elsewhere (valid pixels).
Z = np.array(
    [
        [[2.0, 1.0, -1.0], [0.5, -0.5, -2.0], [1.0, 0.3, 4.0]],
        [[-1.0, 0.0, 1.5], [1.0, 0.5, 0.0], [-0.5, 1.0, -3.0]],
    ]
)
P = np.exp(Z) / np.exp(Z).sum(0)  # softmax over the class axis
CE = np.where(VALID, -np.log((P * Y).sum(0).clip(1e-300)), 0.0)
N_VALID = 8

# Signed distance maps (Kervadec): outside a class, distance to its nearest pixel; inside, -(d - 1) with d the
# distance to the nearest valid pixel of the other class. The ignored pixel (2,2) is no boundary: class 1's
# pixel (1,2) has its nearest class-0 pixel at (0,1), √2 away, so it gets 1 - √2 (it would be 0 if the
# ignored pixel next to it counted as "not class 1").
PHI = np.array(
    [
        [[1 - R2, 0, 1], [0, 1, R2], [0, 1, 0]],  # class 0
        [[R2, 1, 0], [1, 0, 1 - R2], [1, 0, 0]],  # class 1
    ]
)
# Unsigned distance to the label boundary (the same for both classes when there are two): every valid pixel
# touches the other class except (0,0) and (1,2), which are √2 from it.
D_LABELS = np.array([[R2, 1, 1], [1, 1, R2], [1, 1, 0]])
# The same for the predicted masks: predicted class 0 is {(0,0), (0,1), (2,0)}; only (1,2) is √2 from the
# other predicted class.
D_PRED = np.array([[1, 1, 1], [1, 1, R2], [1, 1, 0]])


def _run(name, z=Z, labels=LABELS):
    logits = torch.tensor(z[None], dtype=torch.float32, requires_grad=True)
    value = build_loss({name: 1.0}, num_classes=2)(logits, torch.tensor(labels[None]))
    return value, logits


def _expected(name):
    if name == "topk":  # k = ceil(10% of 8 valid pixels) = 1: the single largest cross-entropy
        return CE[VALID].max()
    if name == "boundary":  # mean over 8 valid pixels × 2 classes of phi * p
        return (PHI * P * VALID).sum() / (N_VALID * 2)
    if name == "hausdorff":  # alpha = 2
        return ((P - Y) ** 2 * VALID * (D_PRED**2 + D_LABELS**2)).sum() / (N_VALID * 2)
    if name == "sensitivity_specificity":  # r = 0.05, per class then the mean of the two
        terms = []
        for c in (0, 1):
            err = (Y[c] - P[c]) ** 2
            pos, neg = Y[c], (1 - Y[c]) * VALID
            terms.append(0.05 * (err * pos).sum() / pos.sum() + 0.95 * (err * neg).sum() / neg.sum())
        return np.mean(terms)
    if name == "iou_balanced":  # the value is the mean cross-entropy (only the gradient is rebalanced)
        return CE.sum() / N_VALID
    if name == "distance_ce":  # weights 1 + (max d - d), max d = √2
        w = np.where(VALID, 1 + (R2 - D_LABELS), 0.0)
        return (w * CE).sum() / w.sum()
    raise AssertionError(name)


def test_every_classic_loss_is_registered():
    assert set(CLASSIC) <= set(LOSSES)


@pytest.mark.parametrize("name", CLASSIC)
def test_value_by_hand(name):
    value, _ = _run(name)
    assert value.shape == () and value.dtype == torch.float32
    assert float(value.detach()) == pytest.approx(_expected(name), rel=1e-5, abs=1e-7)


def test_distance_maps_by_hand():
    inside, outside = class_distances(torch.tensor(LABELS[None]), 2)
    signed = outside - np.where(inside > 0, inside - 1, 0)
    np.testing.assert_allclose(signed[0], PHI, atol=1e-12)
    np.testing.assert_allclose((inside + outside)[0, 0], D_LABELS, atol=1e-12)


def test_distance_maps_match_brute_force_with_ignored_pixels():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((2, 7, 6)) < 0.2, IGNORE, rng.integers(0, 3, (2, 7, 6)))
    inside, outside = class_distances(torch.tensor(labels), 3)
    ys, xs = np.mgrid[:7, :6]
    for n in range(2):
        valid = labels[n] != IGNORE
        for c in range(3):
            fg, rest = labels[n] == c, valid & (labels[n] != c)
            for y, x in zip(ys.ravel(), xs.ravel(), strict=True):
                target = rest if fg[y, x] else fg if rest[y, x] else None
                if target is None or not fg.any() or not rest.any():
                    want = 0.0
                else:
                    want = np.hypot(ys[target] - y, xs[target] - x).min()
                got = inside[n, c, y, x] if fg[y, x] else outside[n, c, y, x]
                assert got == pytest.approx(want), (n, c, y, x)


def test_topk_keeps_the_hardest_fraction():
    logits, labels = torch.tensor(Z[None], dtype=torch.float32), torch.tensor(LABELS[None])
    hardest = np.sort(CE[VALID])[::-1]
    # 25% of 8 valid pixels: the two hardest; 100%: the plain mean cross-entropy.
    assert float(TopKCrossEntropy(0.25)(logits, labels)) == pytest.approx(hardest[:2].mean(), rel=1e-5)
    assert float(TopKCrossEntropy(1.0)(logits, labels)) == pytest.approx(hardest.mean(), rel=1e-5)


def test_iou_balanced_gradient_by_hand():
    value, logits = _run("iou_balanced")
    value.backward()
    # Predicted vs labelled regions: class 0 has IoU 3/4, class 1 has 4/5; eta = 1.5.
    iou = np.where(LABELS == 0, 0.75, 0.8) ** 1.5 * VALID
    w = iou * CE.sum() / (iou * CE).sum()
    expected = w / N_VALID * (P - Y)  # d(ce)/d(logits) = p - y, weights held constant
    np.testing.assert_allclose(logits.grad[0].numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", CLASSIC)
def test_ignored_pixel_changes_nothing(name):
    values, grads = [], []
    for wild in (0.0, 40.0, -25.0):
        z = Z.copy()
        z[:, 2, 2] = [wild, -wild]
        value, logits = _run(name, z)
        value.backward()
        values.append(float(value.detach()))
        grads.append(logits.grad[0, :, 2, 2].abs().max().item())
    assert values == pytest.approx([values[0]] * 3, rel=1e-6)
    assert grads == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", CLASSIC)
def test_gradients_flow_and_all_ignored_is_zero(name):
    value, logits = _run(name)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    value, logits = _run(name, labels=np.full(LABELS.shape, IGNORE))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", CLASSIC)
def test_a_few_steps_lower_the_loss(name):
    rng = np.random.default_rng(1)
    labels = torch.tensor(np.where(rng.random((2, 8, 8)) < 0.1, IGNORE, (np.indices((8, 8))[1] > 3).astype(int)))
    logits = torch.tensor(rng.normal(0, 1, (2, 2, 8, 8)), dtype=torch.float32, requires_grad=True)
    loss = build_loss({name: 1.0}, num_classes=2)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    first = float(loss(logits, labels).detach())
    for _ in range(20):
        optimizer.zero_grad()
        loss(logits, labels).backward()
        optimizer.step()
    assert float(loss(logits, labels).detach()) < first


def test_combined_with_ce_is_the_weighted_sum():
    loss = build_loss({"ce": 1.0, "boundary": 0.5}, num_classes=2)
    value = loss(torch.tensor(Z[None], dtype=torch.float32), torch.tensor(LABELS[None]))
    assert float(value) == pytest.approx(CE.sum() / N_VALID + 0.5 * _expected("boundary"), rel=1e-5)


def test_job_schema_takes_the_new_names_and_refuses_unknown_ones(tmp_path):
    scene, labels = tiny_scene(tmp_path, size=64)
    path = tiny_job(tmp_path, scene, labels)
    job = yaml.safe_load(path.read_text())
    job["train"]["loss"] = {"ce": 1, "boundary": 1}
    path.write_text(yaml.safe_dump(job))
    assert load_job(path).train.loss == {"ce": 1, "boundary": 1}
    job["train"]["loss"] = {"ce": 1, "boundry": 1}
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(JobConfigError, match=r"train\.loss: .*unknown loss 'boundry'; choose from ce, .*distance_ce"):
        load_job(path)
    with pytest.raises(JobConfigError, match=r"unknown loss 'boundry' \(did you mean 'boundary'\?\)"):
        build_loss({"boundry": 1}, num_classes=2)


def test_topk_warms_up_from_plain_cross_entropy():
    loss = build_loss({"topk": 1.0}, num_classes=2)
    logits, labels = torch.tensor(Z[None], dtype=torch.float32), torch.tensor(LABELS[None])
    hardest = np.sort(CE[VALID])[::-1]
    # Before 10% of training: every valid pixel; at 30%: 1 + (0.1 - 1) * 0.5 = 55% of 8 → the 5 hardest;
    # from half-way: 10% → the single hardest.
    for progress, kept in ((0.0, 8), (0.05, 8), (0.3, 5), (0.5, 1), (1.0, 1)):
        loss.set_progress(progress)
        assert float(loss(logits, labels)) == pytest.approx(hardest[:kept].mean(), rel=1e-5), progress


def test_boundary_weight_ramps_with_training_progress():
    loss = build_loss({"ce": 1.0, "boundary": 2.0}, num_classes=2)
    logits, labels = torch.tensor(Z[None], dtype=torch.float32), torch.tensor(LABELS[None])
    ce = CE.sum() / N_VALID
    for progress, share in ((0.0, 0.01), (0.5, 0.505), (1.0, 1.0)):
        loss.set_progress(progress)
        want = ce + 2.0 * share * _expected("boundary")
        assert float(loss(logits, labels)) == pytest.approx(want, rel=1e-5), progress
