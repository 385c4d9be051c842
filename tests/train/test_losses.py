"""Losses against formulas written out here in numpy, on tensors small enough to check by eye."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from geoseg.errors import JobConfigError
from geoseg.io.labels import IGNORE
from geoseg.train.loss_weights import class_weight_map, median_frequency_weights, unet_border_weights
from geoseg.train.losses import _CLASSIC, LOSSES, build_loss

CLASS_WEIGHTS = np.array([0.5, 2.0, 1.5])
# (N=2, H=2, W=2): every class present; one pixel ignored.
TARGETS = np.array([[[0, 1], [2, IGNORE]], [[1, 1], [0, 2]]])
# Class 2 appears only under the ignored pixel: it must count as absent.
TARGETS_CLASS_ONLY_IGNORED = np.array([[[0, 1], [1, IGNORE]], [[1, 0], [0, 0]]])


def _logits(shape=(2, 3, 2, 2), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, shape)


def _pixel_weights(seed=1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 5, TARGETS.shape)


# ---- the formulas, by hand --------------------------------------------------------------------


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nll(z, t):
    """-log p(true class) per pixel, 0 where ignored."""
    logp = np.log(_softmax(z))
    safe = np.where(t == IGNORE, 0, t)
    return np.where(t == IGNORE, 0.0, -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0])


def _weighted_ce(z, t, w):
    w = np.where(t == IGNORE, 0.0, w)
    return (w * _nll(z, t)).sum() / w.sum()


def _overlap(z, t, score):
    """smp's multiclass soft overlap loss: mean over all classes of 1 - score, 0 for absent classes."""
    p, valid, losses = _softmax(z), t != IGNORE, []
    for c in range(z.shape[1]):
        pc, yc = p[:, c][valid], (t[valid] == c).astype(float)
        inter = (pc * yc).sum()
        losses.append(1 - score(inter, pc.sum(), yc.sum()) if yc.sum() > 0 else 0.0)
    return np.mean(losses)


def _focal(z, t, gamma=2.0):
    """smp's multiclass focal loss: one-vs-rest sigmoid focal per class, mean over pixels then classes."""
    valid, losses = t != IGNORE, []
    for c in range(z.shape[1]):
        s, y = 1 / (1 + np.exp(-z[:, c][valid])), (t[valid] == c).astype(float)
        bce = -(y * np.log(s) + (1 - y) * np.log(1 - s))
        losses.append(((1 - np.exp(-bce)) ** gamma * bce).mean())
    return np.mean(losses)


def _lovasz(z, t):
    """Lovász extension of the Jaccard loss Δ(M) = |M| / |G ∪ M| (Berman et al. 2018), present classes."""
    valid = t != IGNORE
    p, labels, losses = np.moveaxis(_softmax(z), 1, -1)[valid], t[valid], []
    for c in np.unique(labels):
        fg = labels == c
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors)
        value, previous = 0.0, 0.0
        for k in range(1, len(order) + 1):
            mistaken = np.zeros_like(fg)
            mistaken[order[:k]] = True
            delta = mistaken.sum() / (fg | mistaken).sum()
            value += errors[order[k - 1]] * (delta - previous)
            previous = delta
        losses.append(value)
    return np.mean(losses)


def _by_hand(name, z, t, pixel_weights=None):
    if name == "ce":
        return _weighted_ce(z, t, np.ones(t.shape))
    if name == "weighted_ce":
        return _weighted_ce(z, t, CLASS_WEIGHTS[np.where(t == IGNORE, 0, t)])
    if name == "border_ce":
        return _weighted_ce(z, t, pixel_weights)
    if name == "dice":
        return _overlap(z, t, lambda i, p, y: 2 * i / (p + y))
    if name == "jaccard":
        return _overlap(z, t, lambda i, p, y: i / (p + y - i))
    if name == "tversky":
        return _overlap(z, t, lambda i, p, y: i / (i + 0.3 * (p - i) + 0.7 * (y - i)))
    if name == "focal":
        return _focal(z, t)
    if name == "lovasz":
        return _lovasz(z, t)
    raise AssertionError(name)


def _run(spec, z, t, pixel_weights=None):
    loss = build_loss(spec, num_classes=z.shape[1], class_weights=CLASS_WEIGHTS)
    pw = None if pixel_weights is None else torch.tensor(pixel_weights, dtype=torch.float32)
    return loss(torch.tensor(z, dtype=torch.float32), torch.tensor(t), pw)


# ---- each loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [TARGETS, TARGETS_CLASS_ONLY_IGNORED], ids=["all-present", "absent"])
# The classic ones: test_classic_losses.py; Gated-SCNN's: test_gscnn_loss.py.
@pytest.mark.parametrize("name", [n for n in LOSSES if n not in _CLASSIC and n != "gscnn_edge"])
def test_each_loss_matches_the_formula(name, targets):
    z, pw = _logits(), _pixel_weights()
    value = _run({name: 1.0}, z, targets, pw)
    assert value.shape == () and value.dtype == torch.float32
    assert float(value) == pytest.approx(_by_hand(name, z, targets, pw), rel=1e-5, abs=1e-6)


def test_cross_entropy_family_matches_torch_conventions():
    z, t = torch.tensor(_logits(), dtype=torch.float32), torch.tensor(TARGETS)
    w = torch.tensor(CLASS_WEIGHTS, dtype=torch.float32)
    expected = torch.nn.functional.cross_entropy(z, t, weight=w, ignore_index=IGNORE)
    got = build_loss({"weighted_ce": 1}, num_classes=3, class_weights=CLASS_WEIGHTS)(z, t)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # border_ce with w = w_c reduces to weighted_ce
    pw = torch.tensor(class_weight_map(TARGETS, CLASS_WEIGHTS))
    assert float(build_loss({"border_ce": 1}, num_classes=3)(z, t, pw)) == pytest.approx(float(expected), rel=1e-6)


def _edges(logits: torch.Tensor) -> torch.Tensor:
    """Boundary logits beside ``logits`` (only gscnn_edge reads them), tied to them so gradients reach ``logits``."""
    return logits[:, :1] - logits[:, 1:2]


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixel_changes_nothing(name):
    loss = build_loss({name: 1.0}, num_classes=3, class_weights=CLASS_WEIGHTS)
    t, pw = torch.tensor(TARGETS), torch.tensor(_pixel_weights(), dtype=torch.float32)
    values, grads = [], []
    for wild in (0.0, 50.0, -30.0):
        z = torch.tensor(_logits(), dtype=torch.float32)
        z[0, :, 1, 1] = torch.tensor([wild, -wild, 2 * wild])  # the ignored pixel
        z.requires_grad_(True)
        value = loss(z, t, pw, _edges(z))
        value.backward()
        values.append(float(value.detach()))
        grads.append(z.grad[0, :, 1, 1].abs().max().item())
    assert values == pytest.approx([values[0]] * 3, rel=1e-6)
    assert grads == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_gives_zero_not_nan(name):
    # smp's FocalLoss gives NaN here and LovaszLoss an empty tensor; CE's mean is 0/0.
    z = torch.tensor(_logits(), dtype=torch.float32, requires_grad=True)
    t = torch.full(TARGETS.shape, IGNORE)
    value = build_loss({name: 1.0}, num_classes=3, class_weights=CLASS_WEIGHTS)(z, t, torch.ones(t.shape), _edges(z))
    value.backward()
    assert value.shape == () and float(value.detach()) == 0.0
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_backpropagates(name):
    rng = np.random.default_rng(3)
    z = torch.tensor(rng.normal(0, 1, (2, 3, 8, 8)), dtype=torch.float32, requires_grad=True)
    t = torch.tensor(np.where(rng.random((2, 8, 8)) < 0.1, IGNORE, rng.integers(0, 3, (2, 8, 8))))
    pw = torch.tensor(rng.uniform(1, 10, (2, 8, 8)), dtype=torch.float32)
    build_loss({name: 1.0}, num_classes=3, class_weights=CLASS_WEIGHTS)(z, t, pw, _edges(z)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_bfloat16_logits_are_scored_in_float32():
    z = torch.tensor(_logits(), dtype=torch.float32)
    loss = build_loss({"ce": 1, "dice": 1}, num_classes=3)
    value = loss(z.bfloat16(), torch.tensor(TARGETS))
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(loss(z.bfloat16().float(), torch.tensor(TARGETS))), rel=1e-6)


# ---- combining -------------------------------------------------------------------------------


def test_combined_loss_is_the_weighted_sum_of_parts():
    z, pw = _logits(), _pixel_weights()
    spec = {"ce": 1.0, "dice": 0.5, "lovasz": 2.0, "border_ce": 0.25}
    expected = sum(w * _by_hand(name, z, TARGETS, pw) for name, w in spec.items())
    assert float(_run(spec, z, TARGETS, pw)) == pytest.approx(expected, rel=1e-5)
    loss = build_loss(spec, num_classes=3)
    parts = loss.parts(torch.tensor(z, dtype=torch.float32), torch.tensor(TARGETS), torch.tensor(pw))
    assert list(parts) == list(spec)
    assert float(parts["dice"]) == pytest.approx(_by_hand("dice", z, TARGETS), rel=1e-5)


def test_needs_flags_and_zero_weights_dropped():
    plain = build_loss({"ce": 1.0, "dice": 1.0}, num_classes=3)
    assert not plain.needs_pixel_weights and not plain.needs_class_weights
    weighted = build_loss({"weighted_ce": 1.0}, num_classes=3, class_weights=CLASS_WEIGHTS)
    assert weighted.needs_class_weights and not weighted.needs_pixel_weights
    border = build_loss({"border_ce": 1.0, "dice": 1}, num_classes=3)
    assert border.needs_pixel_weights and border.needs_class_weights
    dropped = build_loss({"ce": 1.0, "border_ce": 0}, num_classes=3)
    assert dropped.weights == {"ce": 1.0} and not dropped.needs_pixel_weights


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"dise": 1.0},
            "train.loss: unknown loss 'dise' (did you mean 'dice'?); choose from ce, weighted_ce, "
            "border_ce, dice, focal, lovasz, jaccard, tversky",
        ),
        ({"ce": -1.0}, "train.loss.ce: weight must be a number ≥ 0 (got -1.0)"),
        ({"ce": "1"}, "train.loss.ce: weight must be a number ≥ 0 (got '1')"),
        ({"ce": True}, "train.loss.ce: weight must be a number ≥ 0 (got True)"),
        ({"ce": float("nan")}, "train.loss.ce: weight must be a number ≥ 0 (got nan)"),
        ({"ce": 0, "dice": 0.0}, "train.loss: weights must not all be 0 (got {'ce': 0, 'dice': 0.0})"),
        ({}, "train.loss: must map loss names to weights"),
        (["ce"], "train.loss: must map loss names to weights"),
    ],
)
def test_bad_specs_raise_job_config_errors(spec, message):
    with pytest.raises(JobConfigError) as caught:
        build_loss(spec, num_classes=3)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value) and isinstance(caught.value, ValueError)


def test_every_problem_reported_at_once():
    with pytest.raises(JobConfigError) as caught:
        build_loss({"dise": 1.0, "ce": -2, "xyz": 1}, num_classes=3)
    assert len(caught.value.problems) == 3
    assert "unknown loss 'xyz'; choose from ce," in caught.value.problems[2]


def test_programming_errors_are_plain_value_errors():
    with pytest.raises(ValueError, match="weighted_ce needs class_weights") as caught:
        build_loss({"weighted_ce": 1}, num_classes=3)
    assert not isinstance(caught.value, JobConfigError)
    with pytest.raises(ValueError, match="class_weights must be 3 numbers"):
        build_loss({"ce": 1}, num_classes=3, class_weights=[1.0, 2.0])
    loss = build_loss({"border_ce": 1}, num_classes=3)
    z, t = torch.tensor(_logits(), dtype=torch.float32), torch.tensor(TARGETS)
    with pytest.raises(ValueError, match="border_ce needs pixel_weights"):
        loss(z, t)
    with pytest.raises(ValueError, match=r"logits must be \(N, 3, H, W\)"):
        loss(z[:, :2], t, torch.ones(t.shape))


# ---- class weights ---------------------------------------------------------------------------


def test_median_frequency_weights_by_hand():
    # freq = .1, .3, .6, 0 -> median of the present ones .3
    weights = median_frequency_weights(np.array([10, 30, 60, 0]))
    assert weights == pytest.approx([3.0, 1.0, 0.5, 0.0])
    # an even number of present classes takes the mean of the middle two: median(.1, .2, .3, .4) = .25
    assert median_frequency_weights([1, 2, 3, 4]) == pytest.approx([2.5, 1.25, 0.25 / 0.3, 0.625])


@pytest.mark.parametrize("counts", [[0, 0], [1, -1], [[1, 2]]])
def test_median_frequency_weights_reject_bad_counts(counts):
    with pytest.raises(ValueError):
        median_frequency_weights(np.array(counts))


def test_class_weight_map_zero_on_ignored():
    labels = np.array([[0, 1], [2, IGNORE]], np.uint8)
    assert class_weight_map(labels, [0.5, 2.0, 1.5]).tolist() == [[0.5, 2.0], [1.5, 0.0]]


# ---- U-Net border weights --------------------------------------------------------------------


def _two_squares():
    """Two 4x4 squares on rows 8-11, columns 2-5 and 10-13: a 4-pixel gap (columns 6-9)."""
    instances = np.zeros((20, 20), np.int32)
    instances[8:12, 2:6] = 1
    instances[8:12, 10:14] = 2
    return instances


def test_border_term_between_two_squares():
    w0, sigma = 10.0, 5.0
    weights = unet_border_weights(_two_squares())
    assert weights.dtype == np.float32 and weights.shape == (20, 20)
    # (9, 7): 2 px from square 1 (column 5), 3 px from square 2 (column 10)
    assert weights[9, 7] == pytest.approx(1 + w0 * np.exp(-((2 + 3) ** 2) / (2 * sigma**2)), rel=1e-6)
    # (9, 6): 1 px and 4 px
    assert weights[9, 6] == pytest.approx(1 + w0 * np.exp(-((1 + 4) ** 2) / (2 * sigma**2)), rel=1e-6)
    # (4, 7): above the gap, d1 = hypot(4, 2), d2 = hypot(4, 3) = 5
    assert weights[4, 7] == pytest.approx(1 + w0 * np.exp(-((np.hypot(4, 2) + 5) ** 2) / (2 * sigma**2)), rel=1e-6)
    # far corner: d1 = 10, d2 = hypot(8, 14) -> about 1e-5
    assert 1.0 <= weights[0, 19] < 1.0 + 1e-3
    assert (weights[_two_squares() != 0] == 1.0).all()  # no border term inside objects


def test_border_weights_add_to_the_class_map_and_need_two_instances():
    class_map = np.full((20, 20), 0.5, np.float32)
    class_map[_two_squares() != 0] = 3.0
    weights = unet_border_weights(_two_squares(), class_map, w0=4.0, sigma=2.0)
    assert weights[9, 7] == pytest.approx(0.5 + 4.0 * np.exp(-25 / 8), rel=1e-6)
    assert (weights[_two_squares() != 0] == 3.0).all()
    one = np.where(_two_squares() == 2, 2, 0)
    assert (unet_border_weights(one, class_map) == class_map).all()
    assert (unet_border_weights(np.zeros((5, 5), int)) == 1.0).all()


def test_border_weights_match_brute_force_on_many_instances():
    rng = np.random.default_rng(7)
    instances = np.zeros((64, 64), np.int64)
    for k, (r, c, h, w) in enumerate(zip(*rng.integers(0, 60, (2, 30)), *rng.integers(1, 6, (2, 30)), strict=True), 1):
        instances[r : r + h, c : c + w] = 1000 * k + 7  # sparse, large ids
    ids = [i for i in np.unique(instances) if i != 0]
    distances = np.sort([ndimage.distance_transform_edt(instances != i) for i in ids], axis=0)
    expected = 1 + 10 * np.exp(-((distances[0] + distances[1]) ** 2) / 50)
    expected[instances != 0] = 1
    assert unet_border_weights(instances) == pytest.approx(expected, abs=1e-4)
