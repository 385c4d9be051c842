"""Resolution aware: say when a scene's ground pixels differ from the model's training pixels.

A segmentation network learns objects at the size in pixels it saw them: a roof
10 px across at 0.5 m is 50 px across at 0.1 m, and the model was never shown
that. Both pixel sizes are compared on the ground ("Metres are metres"): each
is the side of the square of the same ground area as one pixel, measured by
:func:`geoseg.vectorize.metres.pixel_areas_m2` (geodesic outside true-scale
projections), the scene's at its centre and the model's at the same place
taken into the training CRS (the card records no training location, so the
scene's is the best guess; in a true-scale projected CRS it does not matter).
"""

from __future__ import annotations

import math

from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points

from geoseg.models.card import ModelCard
from geoseg.vectorize.metres import pixel_areas_m2

__all__ = ["RESOLUTION_TOLERANCE", "ground_pixel_m", "model_pixel_size", "resolution_note"]

# Largest ratio between the scene's and the model's ground pixel size, either way, that passes
# without a note. Up to 25 % objects stay within the sizes that photometric noise, resampling and
# the spread of object sizes in training already cover (0.6 m imagery for a 0.5 m model is 1.2x);
# beyond it objects move to sizes in pixels the model rarely saw.
RESOLUTION_TOLERANCE = 1.25


def ground_pixel_m(transform: Affine, crs: CRS, row: float, col: float) -> float:
    """Side in metres of the square of the same ground area as the pixel at (row, col)."""
    return math.sqrt(float(pixel_areas_m2(transform, crs, [row], [col])[0]))


def _model_pixel_m(card: ModelCard, scene_crs: CRS, x: float, y: float) -> float | None:
    """The card's training pixel on the ground at map point (x, y) of the scene; None if unknown."""
    if card.pixel_size is None or card.crs is None:
        return None
    crs = CRS.from_user_input(card.crs)
    xs, ys = warp_points(scene_crs, crs, [x], [y])
    if not (math.isfinite(xs[0]) and math.isfinite(ys[0])):
        return None
    px, py = card.pixel_size
    centred = Affine(px, 0.0, xs[0] - px / 2, 0.0, -py, ys[0] + py / 2)  # pixel (0, 0) centred on the point
    return ground_pixel_m(centred, crs, 0, 0)


def _metres(value: float) -> str:
    """A ground size for people: 0.10, 0.50, 0.075, 2.00, 30."""
    decimals = max(2 if value < 10 else 0, 1 - math.floor(math.log10(value)))
    return f"{value:.{decimals}f}"


def model_pixel_size(
    transform: Affine, crs: CRS, height: int, width: int, card: ModelCard
) -> tuple[float, float] | None:
    """The pixel size, in the scene CRS's units, whose ground size is the model's (None if the card has none)."""
    x, y = transform @ (width / 2, height / 2)
    model_m = _model_pixel_m(card, crs, x, y)
    if model_m is None:
        return None
    ratio = model_m / ground_pixel_m(transform, crs, height / 2, width / 2)
    a, b, _, d, e, _ = tuple(transform)[:6]
    return math.hypot(a, d) * ratio, math.hypot(b, e) * ratio


def resolution_note(name: str, transform: Affine, crs: CRS, height: int, width: int, card: ModelCard) -> str | None:
    """The one-line note when the scene's ground pixels differ from the model's by more than the tolerance.

    ``name`` is the scene as the job names it; the gdalwarp example resamples it to the model's
    ground pixel size in the scene's own CRS units (the scene's own pixel size times the ratio,
    so Web Mercator and degrees get the right map units at the scene's latitude).
    """
    x, y = transform @ (width / 2, height / 2)
    model_m = _model_pixel_m(card, crs, x, y)
    if model_m is None:
        return None
    scene_m = ground_pixel_m(transform, crs, height / 2, width / 2)
    ratio = model_m / scene_m
    if 1 / RESOLUTION_TOLERANCE <= ratio <= RESOLUTION_TOLERANCE:
        return None
    a, b, _, d, e, _ = tuple(transform)[:6]
    tr_x, tr_y = math.hypot(a, d) * ratio, math.hypot(b, e) * ratio
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    finer, factor = ("finer", ratio) if ratio > 1 else ("coarser", 1 / ratio)
    looks = "larger" if ratio > 1 else "smaller"
    return (
        f"predict: note: {name} has {_metres(scene_m)} m pixels but the model was trained on "
        f"{_metres(model_m)} m pixels ({factor:.1f}x {finer}); objects look {factor:.1f}x {looks} than in "
        f"training, which costs accuracy; set `predict.resample: model` to read it at ~{_metres(model_m)} m, "
        f"or resample it first (e.g. gdalwarp -tr {tr_x:.3g} {tr_y:.3g} {name} {stem}_resampled.tif)"
    )
