"""The dense CRF: the windowed mean field equals the full one when the window covers the image, and
an independent loop over pixel pairs; it cleans isolated wrong pixels; tiles with crf_halo pixels of
context equal the whole image; row chunks change nothing; check_crf refuses bad sections in one line."""

import math

import numpy as np
import pytest
import torch

from geoseg.infer.crf import CrfParams, crf_halo, dense_crf, exact_dense_crf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A colour scale that lets the bilateral kernel see differences between random 0–255 pixels.
SOFT = CrfParams(iterations=4, bilateral_sigma_rgb=60.0, bilateral_sigma_xy=6.0, spatial_sigma=2.0)


def _inputs(n=1, c=3, b=3, h=12, w=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=gen) * 2.0
    image = torch.rand(n, b, h, w, generator=gen) * 255.0
    return logits, image


def _numpy_crf(logits: np.ndarray, image: np.ndarray, p: CrfParams) -> np.ndarray:
    """Mean field with explicit loops over pixel pairs; one image, [C,H,W] and [B,H,W]; log Q."""
    c, h, w = logits.shape
    pixels = [(y, x) for y in range(h) for x in range(w)]
    unary = logits.reshape(c, -1).astype(np.float64)
    kernels = np.zeros((2, len(pixels), len(pixels)))
    for i, (yi, xi) in enumerate(pixels):
        for j, (yj, xj) in enumerate(pixels):
            if i == j:
                continue
            d2 = (yi - yj) ** 2 + (xi - xj) ** 2
            col2 = float(np.sum((image[:, yi, xi].astype(np.float64) - image[:, yj, xj]) ** 2))
            kernels[0, i, j] = math.exp(-d2 / (2 * p.bilateral_sigma_xy**2) - col2 / (2 * p.bilateral_sigma_rgb**2))
            kernels[1, i, j] = math.exp(-d2 / (2 * p.spatial_sigma**2))
    norms = kernels.sum(axis=2) + 1e-20

    def softmax(s):
        e = np.exp(s - s.max(axis=0))
        return e / e.sum(axis=0)

    scores = unary.copy()
    q = softmax(unary)
    for _ in range(p.iterations):
        scores = unary.copy()
        for i in range(len(pixels)):
            for j in range(len(pixels)):
                scores[:, i] += (
                    p.bilateral_weight * kernels[0, i, j] / norms[0, i]
                    + p.spatial_weight * kernels[1, i, j] / norms[1, i]
                ) * q[:, j]
        q = softmax(scores)
    log_q = scores - scores.max(axis=0) - np.log(np.exp(scores - scores.max(axis=0)).sum(axis=0))
    return log_q.reshape(c, h, w)


@pytest.mark.parametrize("params", [SOFT, CrfParams()], ids=["soft", "defaults"])
def test_window_covering_the_image_equals_the_exact_crf(params):
    logits, image = _inputs(n=2, b=4)
    covering = CrfParams(**{**params.__dict__, "window": 2 * max(logits.shape[2:]) + 1})
    windowed = dense_crf(logits, image, covering)
    exact = exact_dense_crf(logits, image, params)
    assert windowed.shape == logits.shape
    torch.testing.assert_close(windowed, exact, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(exact, torch.log_softmax(logits, 1), atol=1e-2)  # the CRF did something


def test_exact_crf_equals_loops_over_pixel_pairs():
    logits, image = _inputs(h=6, w=5, seed=1)
    params = CrfParams(iterations=3, bilateral_sigma_rgb=60.0, bilateral_sigma_xy=4.0, spatial_sigma=1.5)
    expected = _numpy_crf(logits[0].numpy(), image[0].numpy(), params)
    got = exact_dense_crf(logits, image, params)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_isolated_wrong_pixels_are_cleaned_up():
    h, w = 32, 32
    gen = torch.Generator().manual_seed(2)
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, w // 2 :] = 1
    image = torch.where(truth.bool(), 190.0, 60.0).expand(1, 3, h, w) + torch.rand(1, 3, h, w, generator=gen) * 8
    logits = torch.nn.functional.one_hot(truth, 2).permute(2, 0, 1)[None].float() * 1.5
    flipped = torch.rand(h, w, generator=gen) < 0.1
    logits[0, :, flipped] = logits[0, :, flipped].flip(0)  # wrong class by 1.5, colour of the right region
    before = int((logits.argmax(1)[0] != truth).sum())
    after = int((dense_crf(logits, image, CrfParams()).argmax(1)[0] != truth).sum())
    assert before == int(flipped.sum()) > 50
    assert after == 0


def test_tiles_with_crf_halo_of_context_equal_the_whole_image():
    params = CrfParams(iterations=3, window=5, bilateral_sigma_rgb=40.0)
    logits, image = _inputs(c=4, h=40, w=36, seed=3)
    whole = dense_crf(logits, image, params)
    halo = crf_halo(params)
    assert halo == 6
    y0, y1, x0, x1 = 14, 26, 12, 24  # a 12×12 tile; its context reaches 8..32 × 6..30, inside the image
    crop = (slice(None), slice(None), slice(y0 - halo, y1 + halo), slice(x0 - halo, x1 + halo))
    tiled = dense_crf(logits[crop], image[crop], params)[:, :, halo:-halo, halo:-halo]
    torch.testing.assert_close(tiled, whole[:, :, y0:y1, x0:x1], atol=1e-5, rtol=1e-5)
    short = dense_crf(logits[crop], image[crop], CrfParams(**{**params.__dict__, "iterations": 4}))
    longer = dense_crf(logits, image, CrfParams(**{**params.__dict__, "iterations": 4}))
    # one more iteration than the halo pays for: the cut edge reaches the tile
    assert not torch.allclose(short[:, :, halo:-halo, halo:-halo], longer[:, :, y0:y1, x0:x1], atol=1e-5)


def test_zero_iterations_returns_the_log_softmax_of_the_unary():
    logits, image = _inputs()
    out = dense_crf(logits, image, CrfParams(iterations=0))
    torch.testing.assert_close(out, torch.log_softmax(logits, 1))
    torch.testing.assert_close(exact_dense_crf(logits, image, CrfParams(iterations=0)), out)


def test_row_chunks_equal_one_chunk():
    logits, image = _inputs(n=2, c=3, b=5, h=23, w=17, seed=4)
    one = dense_crf(logits, image, SOFT, chunk_rows=23)
    for rows in (1, 4, 7):
        torch.testing.assert_close(dense_crf(logits, image, SOFT, chunk_rows=rows), one, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dense_crf(logits, image, SOFT), one, atol=1e-6, rtol=1e-6)


def test_deterministic_and_float32():
    logits, image = _inputs(seed=5)
    a = dense_crf(logits.double(), image.to(torch.uint8), CrfParams())
    b = dense_crf(logits.double(), image.to(torch.uint8), CrfParams())
    assert a.dtype == torch.float32
    assert torch.equal(a, b)


def test_exact_refuses_large_images_and_shapes_must_agree():
    with pytest.raises(ValueError, match="4096"):
        exact_dense_crf(torch.zeros(1, 2, 65, 64), torch.zeros(1, 3, 65, 64), CrfParams())
    with pytest.raises(ValueError, match="differ"):
        dense_crf(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 9), CrfParams())
