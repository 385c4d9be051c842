"""Where things are in a synthetic scene: objects as shapely polygons.

Everything here is in *pixel* coordinates (x = column, y = row, origin at the
top-left corner of the scene); :mod:`geoseg.synthetic.scene` maps them to the
scene CRS. The layout is built in burn order: vegetation, then water, then
roads, then buildings, so a later object is drawn over earlier ones, as the
label raster is burned.

The layout is what makes the scenes need spatial context: streets form grids
with buildings lined up along them, rivers are long and smooth, ponds are
blobs, fields are large rotated parcels. A per-pixel colour rule sees none of
this.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box

__all__ = ["DEMO_CLASSES", "SHADOW_DIRECTION", "SceneObject", "make_layout"]

DEMO_CLASSES = ("background", "water", "building", "road", "vegetation")

# Unit vector (x, y) in pixel space along which every building casts its shadow.
# Fixed for all scenes on purpose: a model trained on one scene must find the
# shadows on the same side in the next one, as with surveys flown at one time of day.
SHADOW_DIRECTION = (0.6, 0.8)


@dataclass(frozen=True)
class SceneObject:
    """One labelled object of the layout.

    Attributes:
        cls: class name, one of :data:`DEMO_CLASSES` except ``"background"``.
        kind: rendering style: ``field``, ``trees``, ``river``, ``pond``,
            ``main_road``, ``street``, ``flat_roof`` or ``gable_roof``.
        geom: a valid Polygon in pixel coordinates, inside the scene.
        params: style numbers: the orientation (radians) for fields and
            buildings, the shadow length in pixels for buildings.
        line: centre line of a road (for lane markings), else ``None``.
    """

    cls: str
    kind: str
    geom: Polygon
    params: tuple[float, ...] = ()
    line: LineString | None = None


def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r0: float,
    *,
    harmonics: int = 5,
    roughness: float = 0.3,
    elongation: float = 1.0,
) -> Polygon:
    """Star-shaped irregular blob (a pond, a tree clump): always a valid polygon."""
    theta = np.linspace(0.0, 2.0 * math.pi, 72, endpoint=False)
    r = np.ones_like(theta)
    for k in range(1, harmonics + 1):
        r += roughness / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    r = r0 * np.clip(r, 0.35, None)
    angle = rng.uniform(0, math.pi)
    x, y = r * np.cos(theta) * elongation, r * np.sin(theta)
    ca, sa = math.cos(angle), math.sin(angle)
    return Polygon(np.column_stack([cx + ca * x - sa * y, cy + sa * x + ca * y]))


def _wander(rng: np.random.Generator, size: int, *, step: float, turn: float) -> np.ndarray:
    """A smooth path that enters the scene on one edge and leaves beyond the other."""
    side = rng.integers(4)
    along = rng.uniform(0.15, 0.85) * size
    start, heading = {
        0: ((-0.1 * size, along), 0.0),
        1: ((1.1 * size, along), math.pi),
        2: ((along, -0.1 * size), math.pi / 2),
        3: ((along, 1.1 * size), -math.pi / 2),
    }[int(side)]
    heading += rng.uniform(-0.45, 0.45)
    n = int(1.6 * size / step) + 2
    rate, pts, (x, y) = 0.0, [], start
    for _ in range(n):
        pts.append((x, y))
        # The turn rate is an AR(1) process: curves bend smoothly, never zig-zag.
        rate = 0.85 * rate + rng.normal(0.0, turn)
        heading += rate
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
    return np.asarray(pts)


def _rect(cx: float, cy: float, w: float, d: float, angle: float) -> Polygon:
    return affinity.rotate(
        box(cx - w / 2, cy - d / 2, cx + w / 2, cy + d / 2), angle, origin=(cx, cy), use_radians=True
    )


def _building(rng: np.random.Generator, cx: float, cy: float, w: float, d: float, angle: float) -> Polygon:
    """A rectangle, or one time in four an L-shape, rotated about its centre."""
    shape = box(-w / 2, -d / 2, w / 2, d / 2)
    if rng.random() < 0.25 and min(w, d) >= 16:
        ww, wd = w * rng.uniform(0.35, 0.55), d * rng.uniform(0.5, 0.9)
        sx = rng.choice([-1.0, 1.0])
        x0 = sx * w / 2 - (ww if sx > 0 else 0.0)
        wing = box(x0, d / 2 - 1.0, x0 + ww, d / 2 + wd)
        shape = shapely.union(shape, wing).simplify(0.01)
    shape = affinity.rotate(shape, angle, origin=(0, 0), use_radians=True)
    return affinity.translate(shape, cx, cy)


def _polys(geom) -> list[Polygon]:
    """The non-trivial polygon parts of any geometry."""
    geom = shapely.make_valid(geom)
    parts = shapely.get_parts(geom) if geom.geom_type in ("MultiPolygon", "GeometryCollection") else [geom]
    out = []
    for p in parts:
        if p.geom_type == "Polygon" and p.area >= 4.0:
            out.append(p)
        elif p.geom_type in ("MultiPolygon", "GeometryCollection"):
            out.extend(_polys(p))
    return out


def _vegetation(rng: np.random.Generator, size: int) -> list[SceneObject]:
    objs: list[SceneObject] = []
    area, target = 0.0, 0.5 * size * size
    while area < target:
        cx, cy = rng.uniform(-0.05, 1.05, 2) * size
        if rng.random() < 0.55:
            w, d = rng.uniform(0.06, 0.16, 2) * size + 40
            angle = rng.uniform(0, math.pi)
            geom = _rect(cx, cy, w, d, angle)
            # Jitter the corners: real parcels are rarely perfect rectangles.
            xy = np.asarray(geom.exterior.coords)[:4] + rng.normal(0, 0.04 * min(w, d), (4, 2))
            cand = Polygon(xy)
            geom = cand if cand.is_valid else geom
            objs.append(SceneObject("vegetation", "field", geom, (angle, float(rng.uniform(4.0, 9.0)))))
        else:
            r0 = rng.uniform(0.02, 0.06) * size + 15
            geom = _blob(rng, cx, cy, r0, harmonics=8, roughness=0.35, elongation=rng.uniform(1.0, 2.0))
            objs.append(SceneObject("vegetation", "trees", geom, (0.0,)))
        area += geom.area
    return objs


def _water(rng: np.random.Generator, size: int) -> list[SceneObject]:
    objs: list[SceneObject] = []
    n_rivers = 1 + int(size >= 3000 and rng.random() < 0.5)
    for _ in range(n_rivers):
        path = _wander(rng, size, step=24.0, turn=0.018)
        width = rng.uniform(0.018, 0.03) * size + 22
        wobble = np.convolve(rng.normal(0, 1, len(path) + 20), np.ones(21) / 21, mode="valid")[: len(path)]
        radii = 0.5 * width * np.clip(1.0 + 1.2 * wobble, 0.6, 1.5)
        pieces = [LineString(path[i : i + 2]).buffer(radii[i], quad_segs=6) for i in range(len(path) - 1)]
        geom = shapely.union_all(pieces).simplify(0.5)
        objs.append(SceneObject("water", "river", geom))
    area, target = sum(o.geom.intersection(box(0, 0, size, size)).area for o in objs), 0.13 * size * size
    while area < target:
        cx, cy = rng.uniform(0.0, 1.0, 2) * size
        r0 = rng.uniform(0.025, 0.07) * size + 12
        geom = _blob(rng, cx, cy, r0, harmonics=6, roughness=0.45, elongation=rng.uniform(1.0, 2.2))
        objs.append(SceneObject("water", "pond", geom))
        area += geom.intersection(box(0, 0, size, size)).area
    return objs


def _roads(
    rng: np.random.Generator, size: int, water
) -> tuple[list[SceneObject], list[tuple[LineString, float, bool]]]:
    """Main roads across the scene and street grids of settlements.

    Returns the road objects and the ``(centre line, half width, sparse)`` of
    every road along which buildings are lined up.
    """
    objs: list[SceneObject] = []
    frontage: list[tuple[LineString, float, bool]] = []
    for _ in range(max(1, round(size / 1100))):
        line = LineString(_wander(rng, size, step=40.0, turn=0.006))
        half = rng.uniform(6.0, 8.0)
        objs.append(SceneObject("road", "main_road", line.buffer(half, cap_style="flat"), line=line))
        frontage.append((line, half, True))
    n_towns = max(1, round(size * size / 4096 / 4096 * 4.5))
    towns: list[tuple[Point, float]] = []
    for _ in range(n_towns):
        radius = rng.uniform(0.13, 0.2) * size + 60
        # A settlement on dry land, apart from the others: of a few random
        # centres keep the one farthest from water and from other towns.
        best = None
        for _ in range(12):
            c = Point(rng.uniform(0.1, 0.9, 2) * size)
            room = min([water.distance(c) + 0.5 * radius] + [c.distance(o) - r - 0.7 * radius for o, r in towns])
            if best is None or room > best[0]:
                best = (room, c)
        assert best is not None  # the first of the 12 tries always sets it
        c = best[1]
        towns.append((c, radius))
        town = _blob(rng, c.x, c.y, radius, harmonics=4, roughness=0.25, elongation=rng.uniform(1.0, 1.5))
        dry_town = town.difference(water.buffer(4.0))
        angle = rng.uniform(0, math.pi)
        spacing = rng.uniform(110, 170, 2)
        half = rng.uniform(4.0, 5.5)
        reach = 1.6 * radius
        lines = []
        for axis in (0, 1):
            for off in np.arange(-reach, reach + 1, spacing[axis]) + rng.uniform(0, spacing[axis]):
                seg = [(-reach, off), (reach, off)] if axis == 0 else [(off, -reach), (off, reach)]
                lines.append(
                    affinity.translate(
                        affinity.rotate(LineString(seg), angle, origin=(0, 0), use_radians=True), c.x, c.y
                    )
                )
        for line in lines:
            clipped = line.intersection(dry_town)
            parts = shapely.get_parts(clipped)
            for part in parts:
                if part.geom_type == "LineString" and part.length > 40:
                    objs.append(SceneObject("road", "street", part.buffer(half, cap_style="flat"), line=part))
                    frontage.append((part, half, False))
    return objs, frontage


def _buildings(rng: np.random.Generator, size: int, frontage, blocked) -> list[SceneObject]:
    cands: list[tuple[Polygon, float]] = []
    for line, half, sparse in frontage:
        coords = np.asarray(line.coords)
        for (x0, y0), (x1, y1) in itertools.pairwise(coords):
            seg_len = math.hypot(x1 - x0, y1 - y0)
            if seg_len < 10:
                continue
            ux, uy = (x1 - x0) / seg_len, (y1 - y0) / seg_len
            angle = math.atan2(uy, ux)
            # Along main roads outside towns buildings are sparse (farmsteads).
            for side in (-1.0, 1.0):
                t = rng.uniform(0, 20)
                while t < seg_len:
                    big = rng.random() < 0.12
                    w = rng.uniform(40, 70) if big else rng.uniform(12, 40)
                    d = rng.uniform(30, 60) if big else rng.uniform(12, 36)
                    setback = half + rng.uniform(3, 12) + d / 2
                    cx = x0 + ux * (t + w / 2) - side * uy * setback
                    cy = y0 + uy * (t + w / 2) + side * ux * setback
                    a = angle + rng.normal(0, 0.04)
                    cands.append((_building(rng, cx, cy, w, d, a), a))
                    t += w + rng.uniform(4, 18)
                    if sparse and rng.random() < 0.3:
                        t += rng.uniform(200, 700)
    if not cands:
        return []
    geoms = np.array([g for g, _ in cands], dtype=object)
    shapely.prepare(blocked)
    free = ~shapely.intersects(blocked, geoms)
    # Greedy in generation order: a candidate is kept unless it touches (with a
    # 2-pixel gap) one already kept; the result does not depend on the tree.
    padded = shapely.buffer(geoms, 1.5, join_style="mitre")
    tree = shapely.STRtree(padded)
    left, right = tree.query(padded, predicate="intersects")
    neighbours: dict[int, list[int]] = {}
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i != j:
            neighbours.setdefault(i, []).append(j)
    kept: set[int] = set()
    scene = box(0, 0, size, size)
    out: list[SceneObject] = []
    for i in range(len(cands)):
        if not free[i] or any(j in kept for j in neighbours.get(i, ())):
            continue
        geom = cands[i][0]
        if not scene.contains(geom):
            geom = geom.intersection(scene)
            if geom.geom_type != "Polygon" or geom.area < 60:
                continue
        kept.add(i)
        kind = "gable_roof" if rng.random() < 0.45 else "flat_roof"
        out.append(SceneObject("building", kind, geom, (cands[i][1], float(rng.uniform(4.0, 12.0)))))
    return out


def make_layout(size: int, rng: np.random.Generator) -> list[SceneObject]:
    """All objects of a ``size``×``size`` scene, in burn order, clipped to the scene.

    Multi-part results of clipping are split, so every object is one valid Polygon.
    """
    scene = box(0, 0, size, size)
    vegetation = _vegetation(rng, size)
    water = _water(rng, size)
    water_union = shapely.union_all([o.geom for o in water])
    roads, frontage = _roads(rng, size, water_union)
    road_union = shapely.union_all([o.geom for o in roads])
    blocked = shapely.union(shapely.buffer(road_union, 2.0), shapely.buffer(water_union, 3.0))
    buildings = _buildings(rng, size, frontage, blocked)
    out: list[SceneObject] = []
    for obj in vegetation + water + roads:
        for part in _polys(obj.geom.intersection(scene)):
            out.append(SceneObject(obj.cls, obj.kind, part, obj.params, obj.line))
    return out + buildings
