"""The demo's flood: where the water spreads, and what the event changed.

The survey scene of the demo is the ground *after* a flood, the pre-event scene
the same ground before it. Both share one layout; the flood only adds water
regions, burned after the roads and before the buildings, so streets, yards and
fields under it turn to water while roofs stay above it. The regions are drawn
from their own random stream, so the rest of the layout is the same with and
without them.

Besides the regions this module builds the files a flood-impact job reads or is
checked against: the road centre lines, a grid of districts, the flood truth
raster (from the two label rasters) and the flooded-building flags (from the
polygons, by the rule :mod:`geoseg.config.impact_spec` documents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import box

from geoseg.config.impact_spec import DEFAULT_BUFFER_M, DEFAULT_MIN_FLOODED_SHARE
from geoseg.synthetic.layout import DEMO_CLASSES, SceneObject, _blob, _polys

__all__ = [
    "ZONE_NAMES",
    "FloodDemoFiles",
    "add_flood",
    "flood_demo_files",
    "flood_truth",
    "flooded_buildings_frame",
    "roads_frame",
    "zones_frame",
]

WATER = DEMO_CLASSES.index("water")
TRUTH_DRY, TRUTH_PERMANENT, TRUTH_FLOOD, TRUTH_NODATA = 0, 1, 2, 255
# Districts of the 3×2 zone grid, row by row from the north-west corner.
ZONE_NAMES = ("Northbrook", "Millbank", "Eastgate", "Westmoor", "Riverside", "Southend")


@dataclass(frozen=True)
class FloodDemoFiles:
    """Paths of the demo's flood files, besides its three scenes."""

    roads: Path
    zones: Path
    flood_truth: Path
    flooded_buildings: Path


def flood_demo_files(out: Path) -> FloodDemoFiles:
    """Where :func:`~geoseg.synthetic.scene.generate_demo` writes the flood files under ``out``."""
    out = Path(out)
    return FloodDemoFiles(
        roads=out / "survey" / "roads.gpkg",
        zones=out / "zones.gpkg",
        flood_truth=out / "survey" / "flood_truth.tif",
        flooded_buildings=out / "survey" / "flooded_buildings.gpkg",
    )


def _street_points(objects: list[SceneObject], size: int, water) -> np.ndarray:
    """Points every 16 px along the streets (else the main roads), on dry ground inside the scene."""
    lines = [o.line for o in objects if o.kind == "street" and o.line is not None]
    if not lines:
        lines = [o.line for o in objects if o.kind == "main_road" and o.line is not None]
    # Clipping splits a road into several objects that share one centre line: sample each line once.
    unique = list({line.wkb: line for line in lines}.values())
    pts = [shapely.line_interpolate_point(line, np.arange(0.0, line.length, 16.0)) for line in unique]
    if not pts:
        return np.empty(0, dtype=object)
    points = np.concatenate(pts)
    inside = shapely.contains_xy(box(0, 0, size, size), *shapely.get_coordinates(points).T)
    return points[inside & ~shapely.intersects(water, points)]


def _density(points: np.ndarray, radius: float) -> np.ndarray:
    """Which points have at least the upper-quartile number of other points within ``radius``."""
    if not len(points):
        return np.zeros(0, bool)
    left, _ = shapely.STRtree(points).query(points, predicate="dwithin", distance=radius)
    count = np.bincount(left, minlength=len(points))
    return count >= np.quantile(count, 0.75)


def add_flood(objects: list[SceneObject], size: int, rng: np.random.Generator) -> list[SceneObject]:
    """The layout with 2–4 flood regions (class ``water``, kind ``flood``) burned just before the buildings.

    Each region is a smooth blob centred on a street point in the built-up
    part of a settlement, on its side nearer the permanent water, where a river
    or pond would spill into it (so a good share of the buildings gets wet),
    and grown until its dry part is its share of 5.5–7.5 % of the scene. The
    regions leave out the permanent water, so they are exactly the new water.

    Args:
        objects: a layout in burn order (buildings last), as from
            :func:`~geoseg.synthetic.layout.make_layout`.
        size: the scene's width and height in pixels.
        rng: the flood's own stream: the only source of randomness here.

    Returns:
        A new list; ``objects`` itself is left alone.
    """
    scene = box(0, 0, size, size)
    water = shapely.union_all([o.geom for o in objects if o.cls == "water"])
    points = _street_points(objects, size, water)
    xy = shapely.get_coordinates(points)
    near = shapely.distance(water, points) if not water.is_empty and len(points) else np.zeros(len(points))
    n = int(rng.integers(2, 5))
    target = rng.uniform(0.055, 0.075) * size * size / n
    r0 = math.sqrt(target / math.pi)
    # Streets per area: the settled core of a town has many street points nearby, its fringe few.
    dense = _density(points, r0)
    centres: list[tuple[float, float]] = []
    blobs = []
    for _ in range(n):
        # Of the dense street points apart from earlier regions, one of the half nearer to the water.
        apart = dense.copy()
        for cx, cy in centres:
            apart &= np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) > 2.0 * r0
        pool = np.flatnonzero(apart) if apart.any() else np.arange(len(xy))
        if len(pool):
            pool = pool[np.argsort(near[pool], kind="stable")][: max(1, len(pool) // 2)]
            cx, cy = (float(v) for v in xy[pool[rng.integers(len(pool))]])
        else:
            cx, cy = (float(v) for v in rng.uniform(0.2, 0.8, 2) * size)
        centres.append((cx, cy))
        blob = _blob(rng, cx, cy, r0, harmonics=5, roughness=0.3, elongation=rng.uniform(1.0, 1.6))
        for _ in range(2):  # grow or shrink the blob until its new water is about `target`
            dry = blob.intersection(scene).difference(water).area
            f = float(np.clip(math.sqrt(target / max(dry, 1.0)), 0.5, 2.5))
            blob = affinity.scale(blob, f, f, origin=(cx, cy))
        blobs.append(blob)
    flood = shapely.union_all(blobs).intersection(scene).difference(water)
    flood_objects = [SceneObject("water", "flood", part) for part in _polys(flood)]
    first_building = next((i for i, o in enumerate(objects) if o.cls == "building"), len(objects))
    return objects[:first_building] + flood_objects + objects[first_building:]


def flood_truth(pre: np.ndarray, post: np.ndarray, nodata: int = 255) -> np.ndarray:
    """Flood truth from the pre- and post-event label rasters (same grid).

    Returns:
        uint8: 0 dry, 1 permanent water (water before and after), 2 flood
        water (water after, not before), 255 where ``post`` is ``nodata``.
    """
    pre_water, post_water = pre == WATER, post == WATER
    truth = np.full(post.shape, TRUTH_DRY, np.uint8)
    truth[post_water & pre_water] = TRUTH_PERMANENT
    truth[post_water & ~pre_water] = TRUTH_FLOOD
    truth[post == nodata] = TRUTH_NODATA
    return truth


def _to_map(geoms, origin: tuple[float, float], pixel_size: float) -> np.ndarray:
    """Pixel-space geometries in map coordinates (top-left corner at ``origin``, north up)."""
    scale = np.array([pixel_size, -pixel_size])
    return shapely.transform(np.asarray(geoms, dtype=object), lambda xy: xy * scale + origin)


def roads_frame(
    objects: list[SceneObject], size: int, origin: tuple[float, float], pixel_size: float, crs: str
) -> gpd.GeoDataFrame:
    """One row per road centre line (main roads, then streets as laid out), clipped to the scene.

    Columns ``road_id`` (1-based), ``kind`` (``main_road`` or ``street``) and
    ``name`` ("Main road 1", "Street 12"). A road that leaves and re-enters
    the scene keeps its name on each of its parts, which get their own ids.
    """
    scene = box(0, 0, size, size)
    seen: set[bytes] = set()
    count = {"main_road": 0, "street": 0}
    kinds, names, lines = [], [], []
    for obj in objects:
        if obj.cls != "road" or obj.line is None or obj.line.wkb in seen:
            continue
        seen.add(obj.line.wkb)
        count[obj.kind] += 1
        name = f"{'Main road' if obj.kind == 'main_road' else 'Street'} {count[obj.kind]}"
        clipped = shapely.line_merge(obj.line.intersection(scene))
        for part in shapely.get_parts(clipped):
            if part.geom_type == "LineString" and part.length > 0:
                kinds.append(obj.kind)
                names.append(name)
                lines.append(part)
    columns = {"road_id": np.arange(1, len(lines) + 1, dtype=np.int32), "kind": kinds, "name": names}
    return gpd.GeoDataFrame(columns, geometry=list(_to_map(lines, origin, pixel_size)), crs=crs)


def zones_frame(bounds: tuple[float, float, float, float], crs: str) -> gpd.GeoDataFrame:
    """Six districts, 3 columns × 2 rows, covering ``bounds`` (in ``crs``) exactly, in EPSG:4326.

    The edges are densified to 10 m before reprojecting, so the districts still
    fit the scene in its own CRS; neighbours share their densified edges
    vertex for vertex, so no gaps open between them.
    """
    left, bottom, right, top = bounds
    xs, ys = np.linspace(left, right, 4), np.linspace(top, bottom, 3)
    cells = [box(xs[c], ys[r + 1], xs[c + 1], ys[r]) for r in range(2) for c in range(3)]
    cells = list(shapely.segmentize(np.array(cells, dtype=object), 10.0))
    columns = {"zone_id": np.arange(1, 7, dtype=np.int32), "name": list(ZONE_NAMES)}
    return gpd.GeoDataFrame(columns, geometry=cells, crs=crs).to_crs("EPSG:4326")


def flooded_buildings_frame(buildings, flood, pre_water, crs: str) -> gpd.GeoDataFrame:
    """Each building's flood share and flag, by the impact stage's rule (all geometries in map units).

    The share is the part of the footprint grown by ``DEFAULT_BUFFER_M`` that
    lies in the new water (``flood`` minus ``pre_water``): the roof itself stays
    dry, so the ring of ground around it is what tells. A building is flooded
    when the share reaches ``DEFAULT_MIN_FLOODED_SHARE``.

    Returns:
        Columns ``building_id`` (1-based, in the given order), ``flooded``
        (bool), ``flooded_share`` (float), with the footprints as geometry.
    """
    buildings = np.asarray(buildings, dtype=object)
    region = shapely.difference(shapely.union_all(flood), shapely.union_all(pre_water))
    grown = shapely.buffer(buildings, DEFAULT_BUFFER_M)
    shapely.prepare(region)
    share = np.zeros(len(buildings))
    touched = shapely.intersects(region, grown)  # only these need the (slow) intersection
    share[touched] = shapely.area(shapely.intersection(grown[touched], region)) / shapely.area(grown[touched])
    columns = {
        "building_id": np.arange(1, len(buildings) + 1, dtype=np.int32),
        "flooded": share >= DEFAULT_MIN_FLOODED_SHARE,
        "flooded_share": share,
    }
    return gpd.GeoDataFrame(columns, geometry=list(buildings), crs=crs)
