"""From a label map to RGB pixels that look (roughly) like an aerial orthophoto.

The colours are made to overlap between classes on purpose, so that a per-pixel
colour rule fails where a model that sees the neighbourhood does not:

* muddy water has the browns of bare soil, but is smooth where soil is grainy;
* building shadows are as dark as deep water, but sit beside a roof, always on
  the same side (:data:`~geoseg.synthetic.layout.SHADOW_DIRECTION`);
* roads and roofs share their greys, but roads are long bands of constant
  width and roofs compact blocks with a darker rim, a ridge or a shadow;
* dry fields approach dry grass, but have crop rows.

On top come a smooth illumination gradient, a slight blur (edges are never
perfectly sharp) and Gaussian sensor noise.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import shapely
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon
from shapely.ops import substring

from geoseg.synthetic.layout import DEMO_CLASSES, SHADOW_DIRECTION, SceneObject

__all__ = ["render_rgb"]

WATER, BUILDING, ROAD, VEGETATION = (DEMO_CLASSES.index(c) for c in ("water", "building", "road", "vegetation"))

SOIL_LIGHT = np.array([196, 172, 132], np.float32)
SOIL_DARK = np.array([128, 98, 72], np.float32)
DRY_GRASS = np.array([176, 168, 112], np.float32)
WATER_DEEP = np.array([24, 46, 70], np.float32)
WATER_MUD = np.array([142, 116, 86], np.float32)
FIELD_GREENS = np.array([[78, 124, 52], [58, 96, 44], [124, 140, 68], [100, 118, 60]], np.float32)
TREE_GREEN = np.array([44, 78, 38], np.float32)
ROOF_RED = np.array([160, 74, 58], np.float32)
ROOF_BROWN = np.array([118, 88, 66], np.float32)
SHADOW_TINT = np.array([9, 16, 26], np.float32)


def _noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Gaussian random field with unit variance and correlation length ~``scale`` px."""
    if scale <= 4:
        field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), scale)
    else:
        # Coarse white noise, smoothed, then linearly upsampled: cheap for big scales.
        n = math.ceil(size / scale) + 3
        coarse = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 1.0)
        field = ndimage.zoom(coarse, scale, order=1)[:size, :size]
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


def _shadow(geom: Polygon, length: float) -> Polygon:
    """The ground a building shades: its footprint swept along the sun's shadow direction."""
    dx, dy = SHADOW_DIRECTION[0] * length, SHADOW_DIRECTION[1] * length
    coords = np.asarray(geom.exterior.coords)
    # a and b are numpy points: `+ (dx, dy)` is vector addition, not tuple concatenation.
    sweep = [Polygon([a, b, b + (dx, dy), a + (dx, dy)]) for a, b in itertools.pairwise(coords)]  # noqa: RUF005
    return shapely.union_all([geom, affinity.translate(geom, dx, dy), *[s for s in sweep if s.area > 0]])


def _markings(objects: list[SceneObject]) -> list[Polygon]:
    """Dashed centre lines of the main roads (1 px wide, 6 m dashes)."""
    out = []
    for obj in objects:
        if obj.kind == "main_road" and obj.line is not None:
            length = obj.line.length
            for start in np.arange(0.0, length, 24.0):
                dash = substring(obj.line, start, min(start + 12.0, length))
                out.append(dash.buffer(0.6, cap_style="flat"))
    return out


def _ground(rng: np.random.Generator, size: int, fine: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Bare soil blended with dry grass over the whole scene: the canvas other classes paint over.

    Two large-scale fields pick the soil's lightness and the grass cover; ``fine``
    and ``grain`` roughen it, so soil is grainy where muddy water is smooth.
    """
    a = np.clip(0.5 + 0.28 * _noise(rng, size, size / 6) + 0.15 * _noise(rng, size, 60), 0, 1)[..., None]
    b = np.clip(0.35 + 0.35 * _noise(rng, size, size / 8), 0, 1)[..., None]
    img = ((1 - a) * SOIL_LIGHT + a * SOIL_DARK) * (1 - b) + b * DRY_GRASS
    del a, b  # demo scenes are 4096² px: free the full-size fields early
    img *= (1 + 0.07 * fine + 0.045 * grain)[..., None]
    return img


def _roof_colour(rng: np.random.Generator) -> tuple[float, float, float] | np.ndarray:
    """One building's roof: mostly greys (as dark or light as roads), some red, brown or dark."""
    u = rng.random()
    if u < 0.55:
        g = rng.uniform(85, 200)
        return (g, g, g + 3)
    if u < 0.75:
        return ROOF_RED + rng.normal(0, 10, 3)
    if u < 0.9:
        return ROOF_BROWN + rng.normal(0, 8, 3)
    return (70, 70, 74)


def _style_tables(objects: list[SceneObject], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-object colour ``(n + 1, 3)`` and water shade ``(n + 1,)``, indexed by object id.

    Row 0 is the background and stays unused. ``shade`` is a water body's offset
    of the blue→mud mix; objects draw from ``rng`` in layout order.
    """
    n = len(objects)
    colour = np.zeros((n + 1, 3), np.float32)
    shade = np.zeros(n + 1, np.float32)
    for i, obj in enumerate(objects, start=1):
        if obj.kind == "field":
            colour[i] = FIELD_GREENS[rng.integers(len(FIELD_GREENS))] + rng.normal(0, 6, 3)
        elif obj.kind == "trees":
            colour[i] = TREE_GREEN + rng.normal(0, 5, 3)
        elif obj.cls == "water":
            # Flood water (kind "flood") is drawn like the ponds and rivers it spread from: murky or clear
            # by place, as they are.
            shade[i] = rng.normal(0, 0.22)
        elif obj.cls == "road":
            g = rng.uniform(100, 160)
            colour[i] = (g + 4, g + 2, g - 3)
        elif obj.cls == "building":
            colour[i] = _roof_colour(rng)
    return colour, shade


def _paint_water(
    img: np.ndarray, labels: np.ndarray, ids: np.ndarray, shade: np.ndarray, fine: np.ndarray, rng: np.random.Generator
) -> None:
    """Water, in place: a smooth blue→muddy-brown mix varying across the scene and per body, rare glints."""
    size = labels.shape[0]
    water = labels == WATER
    t = 0.45 + 0.35 * _noise(rng, size, size / 4) + 0.25 * _noise(rng, size, 150) + shade[ids]
    t = np.clip(t, 0, 1)[..., None]
    # Barely any texture: smoothness is what tells muddy water from grainy soil.
    water_rgb = ((1 - t) * WATER_DEEP + t * WATER_MUD) * (1 + 0.012 * fine)[..., None]
    img[water] = water_rgb[water]
    del t, water_rgb
    glint = water & (rng.random((size, size), dtype=np.float32) < 0.0015)
    glint = ndimage.binary_dilation(glint) & water
    img[glint] = 0.3 * img[glint] + 0.7 * np.float32(245)


def _paint_vegetation(
    img: np.ndarray,
    objects: list[SceneObject],
    labels: np.ndarray,
    ids: np.ndarray,
    colour: np.ndarray,
    fine: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Vegetation, in place: fields with crop rows (angle, period from ``params``), trees with crowns."""
    size = labels.shape[0]
    # Work on the vegetation pixels only, with per-pixel copies of their object's parameters.
    rows, cols = np.nonzero(labels == VEGETATION)
    oid = ids[rows, cols]
    kinds = np.array([o.kind == "field" for o in objects], bool)
    is_field = np.concatenate([[False], kinds])[oid]
    angle = np.array([0.0] + [o.params[0] if o.params else 0.0 for o in objects], np.float32)[oid]
    period = np.array([1.0] + [o.params[1] if len(o.params) > 1 else 1.0 for o in objects], np.float32)[oid]
    phase = 2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / period
    crowns = _noise(rng, size, 2.5)[rows, cols]
    factor = np.where(is_field, 1 + 0.09 * np.sin(phase) + 0.05 * fine[rows, cols], 0.8 + 0.3 * np.tanh(1.5 * crowns))
    img[rows, cols] = colour[oid] * factor[:, None]


def _paint_roads(
    img: np.ndarray,
    objects: list[SceneObject],
    labels: np.ndarray,
    ids: np.ndarray,
    colour: np.ndarray,
    fine: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Roads, in place: flat greys with faint patches, dashed centre lines on main roads."""
    size = labels.shape[0]
    road = labels == ROAD
    patches = _noise(rng, size, 25)
    img[road] = colour[ids[road]] * (1 + 0.02 * fine[road] + 0.05 * patches[road])[:, None]
    marks = _markings(objects)
    if marks:
        paint = rasterize(marks, out_shape=(size, size), fill=0, default_value=1, dtype="uint8").astype(bool) & road
        img[paint] = 0.45 * img[paint] + 0.55 * np.float32(228)


def _paint_buildings(
    img: np.ndarray,
    objects: list[SceneObject],
    labels: np.ndarray,
    ids: np.ndarray,
    colour: np.ndarray,
    fine: np.ndarray,
) -> np.ndarray:
    """Buildings, in place: roofs with a darker rim, gable roofs lit on one side.

    Returns:
        The building mask, which shadows must not fall on.
    """
    rows, cols = np.nonzero(labels == BUILDING)
    oid = ids[rows, cols]
    cx = np.array([0.0] + [o.geom.centroid.x for o in objects], np.float32)[oid]
    cy = np.array([0.0] + [o.geom.centroid.y for o in objects], np.float32)[oid]
    ang = np.array([0.0] + [o.params[0] if o.cls == "building" else 0.0 for o in objects], np.float32)[oid]
    gable = np.array([False] + [o.kind == "gable_roof" for o in objects], bool)[oid]
    # Signed distance across the ridge: which half of a gable roof faces the light.
    across = (cols + 0.5 - cx) * -np.sin(ang) + (rows + 0.5 - cy) * np.cos(ang)
    factor = np.where(gable, np.where(across > 0, 1.12, 0.86), 1 + 0.015 * fine[rows, cols])
    img[rows, cols] = colour[oid] * factor[:, None]
    building = labels == BUILDING
    rim = building & ~ndimage.binary_erosion(building)
    img[rim] *= 0.8
    return building


def _paint_shadows(img: np.ndarray, objects: list[SceneObject], building: np.ndarray) -> None:
    """Shadows, in place: they fall on whatever is beside a building, never on a roof."""
    size = building.shape[0]
    shadows = [_shadow(o.geom, o.params[1]) for o in objects if o.cls == "building"]
    if shadows:
        shade_mask = rasterize(shadows, out_shape=(size, size), fill=0, default_value=1, dtype="uint8").astype(bool)
        shade_mask &= ~building
        img[shade_mask] = 0.22 * img[shade_mask] + SHADOW_TINT


def _illuminate(img: np.ndarray, rng: np.random.Generator) -> None:
    """Illumination, in place: a gentle ramp (±15 %) in a random direction, plus slow undulation."""
    size = img.shape[0]
    theta = rng.uniform(0, 2 * math.pi)
    coord = np.linspace(-1, 1, size, dtype=np.float32)
    ramp = (math.cos(theta) * coord[None, :] + math.sin(theta) * coord[:, None]) / max(
        abs(math.cos(theta)) + abs(math.sin(theta)), 1e-6
    )
    img *= (1 + 0.15 * ramp + 0.03 * _noise(rng, size, size / 3))[..., None]


def _sensor(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The camera: a slight blur (edges are never perfectly sharp), then Gaussian noise."""
    img = ndimage.gaussian_filter(img, sigma=(0.7, 0.7, 0))
    img += 2.5 * rng.standard_normal(img.shape, dtype=np.float32)
    return img


def render_rgb(objects: list[SceneObject], labels: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render the scene as float32 RGB, shape ``(size, size, 3)``, values ~[0, 255].

    Args:
        objects: the layout, in burn order.
        labels: the class index of each pixel (as burned from the polygons).
        ids: ``1 + index`` into ``objects`` of the object burned at each pixel,
            0 for background; burned from the same polygons in the same order.
        rng: the only source of randomness.

    Returns:
        The image; the same inputs and ``rng`` state always give the same pixels.
    """
    # The steps draw from ``rng`` in this fixed order; reordering them changes every scene.
    size = labels.shape[0]
    fine = _noise(rng, size, 1.5)
    grain = rng.standard_normal((size, size), dtype=np.float32)
    img = _ground(rng, size, fine, grain)
    del grain
    colour, shade = _style_tables(objects, rng)
    _paint_water(img, labels, ids, shade, fine, rng)
    _paint_vegetation(img, objects, labels, ids, colour, fine, rng)
    _paint_roads(img, objects, labels, ids, colour, fine, rng)
    building = _paint_buildings(img, objects, labels, ids, colour, fine)
    _paint_shadows(img, objects, building)
    _illuminate(img, rng)
    return _sensor(img, rng)
