"""``vectorize.simplify_m`` by bands: each band simplified as one coverage, its edges pinned.

GEOS's coverage simplification (``shapely.coverage_simplify``: Martin Davis's CoverageSimplifier,
GEOS 3.12, Visvalingam–Whyatt per edge with checks that no edge crosses another) simplifies each
edge of a polygonal coverage, from node to node, once for both polygons that share it. A band of
whole chunk rows (:mod:`geoseg.vectorize.bands`) is simplified as the coverage of its regions
plus its background (the band's rectangle less the regions), with the coverage's boundary, the
rectangle, left as it is (``simplify_boundary=False``). So:

- a border inside a band moves once, for both sides: no gap or overlap opens, as in one coverage
  of the whole scene;
- a band's top and bottom edges do not move: the two pieces of a region that crosses a seam,
  simplified by two tasks, meet along the same seam segment and join exactly; a border that
  crosses a seam keeps a vertex on the seam line (the only trace of the bands in the output);
- bands are planned from the mosaic's shape alone, so the output is the same for any worker count.

One tolerance serves the whole scene (:func:`scene_tolerance`): the smallest, in map units, that
any part of the scene needs for ``simplify_m`` on the ground, so no vertex moves more.

The driver joins the open regions' pixel pieces across bands as before (their identity), and
their geometry is the union of their simplified pieces (:class:`OpenPieces`).
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.vectorize.components import first_pixels
from geoseg.vectorize.export import pixel_to_map
from geoseg.vectorize.metres import simplify_tolerance
from geoseg.vectorize.pixelgeom import node_polygons

__all__ = ["OpenPieces", "inner_points", "scene_tolerance", "simplify_band"]

SCALE_GRID = 9  # the scene's scale is measured at the centre and corners of SCALE_GRID² cells


def scene_tolerance(transform: Affine, crs: CRS, height: int, width: int, simplify_m: float) -> float:
    """``simplify_m`` on the ground as one tolerance in map units for the whole ``height`` x ``width`` scene."""
    edges_r = np.linspace(0, height, SCALE_GRID + 1)
    edges_c = np.linspace(0, width, SCALE_GRID + 1)
    cells = shapely.box(
        edges_c[:-1][None, :], edges_r[:-1][:, None], edges_c[1:][None, :], edges_r[1:][:, None]
    ).ravel()
    return float(simplify_tolerance(pixel_to_map(cells, transform), crs, simplify_m).min())


def simplify_band(
    pixel_geoms: np.ndarray, first_row: int, stop_row: int, width: int, transform: Affine, tolerance: float
) -> np.ndarray:
    """The band's regions (pixel polygons) simplified as one coverage with the band's rectangle pinned.

    Returns their map geometries, in the same order.
    """
    if not len(pixel_geoms):
        return np.empty(0, dtype=object)
    frame = shapely.box(0, first_row, width, stop_row)
    background = shapely.difference(frame, shapely.coverage_union_all(node_polygons(pixel_geoms)))
    coverage = np.concatenate([pixel_geoms, np.array([background], dtype=object)])
    if shapely.is_empty(background):
        coverage = coverage[:-1]
    noded = pixel_to_map(node_polygons(coverage), transform)
    try:
        simplified = shapely.coverage_simplify(noded, tolerance, simplify_boundary=False)
    except shapely.errors.GEOSException:
        # Not expected for pixel coverages; a failed coverage pass must not fail the stage. Per-polygon
        # simplification keeps each region valid, but may open slivers between touching classes.
        simplified = shapely.simplify(noded, tolerance, preserve_topology=True)
    return np.asarray(simplified[: len(pixel_geoms)], dtype=object)


def inner_points(pixel_geoms: np.ndarray) -> np.ndarray:
    """(n, 2) x, y of a pixel centre inside each pixel polygon (its first pixel's)."""
    rows, cols = first_pixels(pixel_geoms)
    return np.column_stack([cols + 0.5, rows + 0.5]).astype(np.float64)


class OpenPieces:
    """The simplified pieces of the regions still open across band seams, until their region closes.

    Each piece is known by a point inside its pixel polygon; a joined region (pixel polygon) takes
    the pieces whose points it contains (its pieces are disjoint and cover it exactly).
    """

    def __init__(self) -> None:
        self._points = np.zeros((0, 2), dtype=np.float64)
        self._geoms = np.empty(0, dtype=object)

    def __len__(self) -> int:
        return len(self._geoms)

    def add(self, points: np.ndarray, geoms: np.ndarray) -> None:
        self._points = np.concatenate([self._points, np.asarray(points, np.float64).reshape(-1, 2)])
        self._geoms = np.concatenate([self._geoms, np.asarray(geoms, dtype=object)])

    def take(self, regions: list[tuple[int, object]]) -> np.ndarray:
        """The map geometry of each joined region: the union of its simplified pieces (which are released)."""
        out = np.empty(len(regions), dtype=object)
        if not regions:
            return out
        tree = shapely.STRtree(shapely.points(self._points))
        region_index, piece_index = tree.query([g for _, g in regions], predicate="contains")
        order = np.argsort(region_index, kind="stable")
        region_index, piece_index = region_index[order], piece_index[order]
        starts = np.searchsorted(region_index, np.arange(len(regions) + 1))
        for i in range(len(regions)):
            pieces = self._geoms[piece_index[starts[i] : starts[i + 1]]]
            if not len(pieces):
                raise AssertionError(f"joined region {i} has no simplified piece")  # a bug, not bad input
            out[i] = pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
        keep = np.ones(len(self._geoms), dtype=bool)
        keep[piece_index] = False
        self._points, self._geoms = self._points[keep], self._geoms[keep]
        return out
