"""Gated-SCNN's loss terms against values worked out with explicit loops (numpy) on a 1×3×4×4 tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoseg.train.gscnn_loss import GatedSCNNLoss, boundary_map, softmax_boundary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

I = 255  # noqa: E741 (ignore_index)
# Classes 0 (top left), 1 (top right), 2 (bottom); the bottom-right pixel is no data.
LABELS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 1], [2, 2, 2, I]])
# Worked out by hand: the ignored pixel and its 4-neighbours are not valid; a valid pixel is a boundary pixel
# when a 4-neighbour inside the crop has another label.
VALID = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
BOUNDARY = np.array([[0, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
RNG = np.random.default_rng(0)
Z = RNG.normal(scale=2.0, size=(3, 4, 4))  # segmentation logits
E = RNG.normal(scale=2.0, size=(4, 4))  # boundary logits
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _inside(i: int, j: int) -> bool:
    return 0 <= i < 4 and 0 <= j < 4


def _softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(z) / np.exp(z).sum(0)


def _ce(i: int, j: int) -> float:
    return -math.log(_softmax(Z[:, i, j])[LABELS[i, j]])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def hand_terms(z: np.ndarray = Z, e: np.ndarray = E) -> dict[str, float]:
    pixels = [(i, j) for i in range(4) for j in range(4)]
    labelled = [(i, j) for i, j in pixels if LABELS[i, j] != I]
    valid = [(i, j) for i, j in pixels if VALID[i, j]]
    seg = _mean([_ce(i, j) for i, j in labelled])

    positives = sum(BOUNDARY[i, j] for i, j in valid)
    beta = (len(valid) - positives) / len(valid)
    bce = []
    for i, j in valid:
        p = 1 / (1 + math.exp(-e[i, j]))
        y = float(BOUNDARY[i, j])
        bce.append((beta if y else 1 - beta) * -(y * math.log(p) + (1 - y) * math.log(1 - p)))
    edge = _mean(bce)

    prob = _softmax(z)
    zeta = np.zeros((4, 4))
    for i, j in pixels:
        for di, dj in NEIGHBOURS:
            if _inside(i + di, j + dj):
                tv = 0.5 * sum(abs(prob[k, i, j] - prob[k, i + di, j + dj]) for k in range(3))
                zeta[i, j] = max(zeta[i, j], tv)
    predicted = [abs(zeta[i, j] - BOUNDARY[i, j]) for i, j in valid if zeta[i, j] > 1e-8]
    on_boundary = [abs(zeta[i, j] - 1.0) for i, j in valid if BOUNDARY[i, j]]
    dual = 0.5 * _mean(predicted) + 0.5 * _mean(on_boundary)

    attention = _mean([_ce(i, j) for i, j in labelled if 1 / (1 + math.exp(-e[i, j])) > 0.8])
    return {"seg": seg, "edge": edge, "dual": dual, "attention": attention}


def tensors(z: np.ndarray = Z, e: np.ndarray = E) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.tensor(z[None], dtype=torch.float64, requires_grad=True)
    edge = torch.tensor(e[None, None], dtype=torch.float64, requires_grad=True)
    return logits, edge, torch.tensor(LABELS[None])


def test_boundary_map_by_hand():
    boundary, valid = boundary_map(torch.tensor(LABELS[None]), I)
    assert boundary.dtype == valid.dtype == torch.bool
    np.testing.assert_array_equal(valid[0].numpy(), VALID)
    np.testing.assert_array_equal(boundary[0].numpy(), BOUNDARY)
    # No ignored pixel: every pixel is valid; a single label has no boundary (the crop edge is none).
    boundary, valid = boundary_map(torch.zeros(2, 3, 5, dtype=torch.long), I)
    assert valid.all() and not boundary.any()


def test_every_term_matches_the_hand_computation():
    expected = hand_terms()
    assert expected["attention"] > 0 and expected["dual"] > 0  # the example exercises every term
    assert sum(1 / (1 + math.exp(-v)) > 0.8 for v in E.ravel()) >= 2
    terms = GatedSCNNLoss().terms(*tensors(), ignore_index=I)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-9), name


def test_total_weights_the_terms_with_the_papers_defaults():
    expected = hand_terms()
    default = GatedSCNNLoss()(*tensors(), ignore_index=I)  # CE left to geoseg's own loss
    assert default.item() == pytest.approx(20 * expected["edge"] + expected["dual"] + expected["attention"])
    weights = {"seg_weight": 1.0, "edge_weight": 2.0, "dual_weight": 3.0, "attention_weight": 0.5}
    total = GatedSCNNLoss(**weights)(*tensors(), ignore_index=I)
    by_hand = expected["seg"] + 2 * expected["edge"] + 3 * expected["dual"] + 0.5 * expected["attention"]
    assert total.item() == pytest.approx(by_hand)


def test_ignored_pixels_count_nowhere():
    loss = GatedSCNNLoss(seg_weight=1.0)
    logits, edge, targets = tensors()
    value = loss(logits, edge, targets, ignore_index=I)
    value.backward()
    z, e = Z.copy(), E.copy()
    z[:, 3, 3] = [9.0, -7.0, 3.0]  # the ignored pixel
    e[3, 3] = 5.0
    assert loss(*tensors(z, e), ignore_index=I).item() == value.item()
    assert logits.grad is not None and edge.grad is not None
    assert torch.all(logits.grad[0, :, 3, 3] == 0) and edge.grad[0, 0, 3, 3] == 0
    # The boundary BCE and the dual term leave out the neighbours of no data as well.
    e[2, 3] = e[3, 2] = -6.0
    assert GatedSCNNLoss(attention_weight=0.0)(*tensors(Z, e), ignore_index=I).item() == pytest.approx(
        GatedSCNNLoss(attention_weight=0.0)(*tensors(), ignore_index=I).item()
    )


def test_the_gradient_reaches_the_boundary_logits():
    logits, edge, targets = tensors()
    GatedSCNNLoss()(logits, edge, targets, ignore_index=I).backward()
    assert edge.grad is not None
    grad = edge.grad[0, 0].numpy()
    assert np.all(grad[VALID] != 0) and np.all(grad[~VALID] == 0)
    # Hand: d(β·BCE)/dz = w (σ(z) − y) / |valid| at a boundary pixel, times the edge weight 20.
    p = 1 / (1 + math.exp(-E[0, 1]))
    assert grad[0, 1] == pytest.approx(20 * (5 / 13) * (p - 1) / 13)


def test_softmax_boundary_of_one_hot_probabilities_is_the_label_boundary():
    labels = torch.tensor([[[0, 0, 1], [2, 0, 1], [2, 2, 1]]])
    logits = 100.0 * F.one_hot(labels, 3).permute(0, 3, 1, 2).double()
    zeta = softmax_boundary(logits)
    boundary, _ = boundary_map(labels, I)
    torch.testing.assert_close(zeta, boundary.double())
    zeta = softmax_boundary(torch.randn(2, 4, 5, 5))
    assert zeta.shape == (2, 5, 5) and 0 <= zeta.min() <= zeta.max() <= 1


def test_an_all_ignored_batch_gives_zero_with_a_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    edge = torch.randn(1, 1, 4, 4, requires_grad=True)
    value = GatedSCNNLoss(seg_weight=1.0)(logits, edge, torch.full((1, 4, 4), I), ignore_index=I)
    assert value.item() == 0.0
    value.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_trains_the_model_with_its_boundary_logits():
    """Through geoseg's training step and the job's ``{ce: 1, gscnn_edge: 1}``: the step reads model.edge_logits."""
    from geoseg.models.gatedscnn import GatedSCNN
    from geoseg.train.loop import semantic_step
    from geoseg.train.losses import build_loss

    torch.manual_seed(0)
    model = GatedSCNN(3, 3, encoder="resnet18", aspp_channels=8, shape_channels=(4, 4, 4, 4)).train()
    x = torch.randn(2, 3, 32, 32)
    targets = torch.zeros(2, 32, 32, dtype=torch.long)
    targets[:, :, 16:] = 1
    targets[:, 24:, :] = 2
    targets[0, :4, :4] = I
    job_loss = build_loss({"ce": 1.0, "gscnn_edge": 1.0}, num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    values = []
    for _ in range(4):
        optimizer.zero_grad()
        value = semantic_step(model, [x, targets], device=torch.device("cpu"), loss_fn=job_loss)
        by_hand = F.cross_entropy(model(x), targets, ignore_index=I)  # the same forward again (no dropout)
        by_hand = by_hand + GatedSCNNLoss()(model(x), model.edge_logits, targets, I)
        assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
        value.backward()
        assert model.shape_stream.fuse.weight.grad is not None
        optimizer.step()
        values.append(value.item())
    assert values[-1] < values[0]


@pytest.mark.parametrize(
    "kwargs", [{"edge_weight": -1.0}, {"dual_weight": math.nan}, {"seg_weight": True}, {"edge_threshold": 1.0}]
)
def test_bad_weights_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GatedSCNNLoss(**kwargs)


def test_mismatched_shapes_are_refused():
    logits, edge, targets = tensors()
    with pytest.raises(ValueError, match="edge_logits"):
        GatedSCNNLoss()(logits, edge[..., :3], targets)
    with pytest.raises(ValueError, match="targets"):
        GatedSCNNLoss()(logits, edge, targets[..., :3])


def test_the_job_loss_needs_boundary_logits():
    from geoseg.train.losses import build_loss

    with pytest.raises(ValueError, match="gscnn_edge needs the boundary logits"):
        build_loss({"gscnn_edge": 1.0}, num_classes=3)(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
