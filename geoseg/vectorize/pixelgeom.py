"""Fast, exact operations on polygons in pixel coordinates.

Polygons traced from a raster have integer vertices and only horizontal and
vertical edges. That makes two things cheap with plain array arithmetic that
GEOS does slowly in general:

* *noding*: putting a vertex wherever another polygon's vertex lies on an edge,
  so that polygons sharing a border carry identical vertices along it. GEOS's
  coverage operations (``coverage_union_all``, ``coverage_simplify``) require
  this and are then several times faster than their general counterparts.
* dropping *collinear* vertices, which a union leaves behind on old seams.

Both work on the ragged (coordinates + offsets) form of many polygons at once.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["drop_collinear", "node_polygons", "union_pieces"]


def _ring_layout(ring_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring index of every vertex, its position in the ring, and the ring lengths."""
    lengths = np.diff(ring_offsets)
    ring_of = np.repeat(np.arange(len(lengths)), lengths)
    return ring_of, np.arange(ring_offsets[-1]) - ring_offsets[ring_of], lengths


def _from_ragged(geom_type, coords: np.ndarray, offsets: tuple) -> np.ndarray:
    geoms = shapely.from_ragged_array(geom_type, coords, offsets)
    if geom_type == shapely.GeometryType.MULTIPOLYGON:
        # Mixed input comes back all-multi; single parts were Polygons before.
        single = shapely.get_num_geometries(geoms) == 1
        geoms[single] = shapely.get_geometry(geoms[single], 0)
    return geoms


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    # Sort-based; numpy's hash-based unique is several times slower here.
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]]


def _points_between(keys: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each open interval (a, b), the first index in sorted ``keys`` inside it and how many are."""
    lo = np.searchsorted(keys, np.minimum(a, b), side="right")
    hi = np.searchsorted(keys, np.maximum(a, b), side="left")
    return lo, np.maximum(hi - lo, 0)


def node_polygons(geoms: np.ndarray) -> np.ndarray:
    """Insert every polygon vertex that lies inside another edge, as a vertex of that edge.

    The geometries are unchanged as point sets; afterwards shared borders carry
    the same vertices on both sides, as GEOS's coverage operations need.
    Input: Polygons/MultiPolygons with integer, axis-parallel edges.
    """
    geom_type, coords, offsets = shapely.to_ragged_array(geoms)
    ring_offsets = offsets[0]
    origin = np.floor(coords.min(axis=0)) if len(coords) else np.zeros(2)
    xy = np.rint(coords - origin).astype(np.int64)
    n = len(xy)
    has_edge = np.ones(n, dtype=bool)
    has_edge[ring_offsets[1:] - 1] = False  # a ring's closing vertex starts no edge
    x, y = xy[:, 0], xy[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    span = int(xy.max(initial=0)) + 2
    row_keys = _sorted_unique(y * span + x)  # every vertex, ordered along rows
    col_keys = _sorted_unique(x * span + y)  # and along columns
    # An edge one pixel long has no integer point inside: skip most of a staircase.
    horizontal = has_edge & (y == yn) & (np.abs(x - xn) > 1)
    vertical = has_edge & (x == xn) & (np.abs(y - yn) > 1)
    first = np.zeros(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    first[horizontal], count[horizontal] = _points_between(
        row_keys, y[horizontal] * span + x[horizontal], yn[horizontal] * span + xn[horizontal]
    )
    first[vertical], count[vertical] = _points_between(
        col_keys, x[vertical] * span + y[vertical], xn[vertical] * span + yn[vertical]
    )
    total = int(count.sum())
    if total == 0:
        return np.asarray(geoms)

    # Each old vertex moves down by the points inserted before it.
    before = np.concatenate([[0], np.cumsum(count)])
    out = np.empty((n + total, 2), dtype=np.int64)
    old_slots = np.arange(n) + before[:-1]
    out[old_slots] = xy
    edge = np.repeat(np.arange(n), count)
    k = np.arange(total) - before[edge]
    backwards = np.where(horizontal[edge], xn[edge] < x[edge], yn[edge] < y[edge])
    index = first[edge] + np.where(backwards, count[edge] - 1 - k, k)  # in the edge's direction
    on_row = horizontal[edge]
    keys = np.where(
        on_row, row_keys[np.minimum(index, len(row_keys) - 1)], col_keys[np.minimum(index, len(col_keys) - 1)]
    )
    major, minor = keys // span, keys % span
    new_slots = np.ones(n + total, dtype=bool)
    new_slots[old_slots] = False
    out[new_slots] = np.where(on_row[:, None], np.column_stack([minor, major]), np.column_stack([major, minor]))
    new_offsets = (ring_offsets + before[ring_offsets], *offsets[1:])
    return _from_ragged(geom_type, out.astype(np.float64) + origin, new_offsets)


def _compact(coords: np.ndarray, ring_offsets: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the marked vertices (never a closing one) and close each ring again."""
    ring_of, _, lengths = _ring_layout(ring_offsets)
    rings = ring_of[keep]
    kept_per_ring = np.bincount(rings, minlength=len(lengths))
    kept_before = np.concatenate([[0], np.cumsum(kept_per_ring)])
    new_offsets = np.concatenate([[0], np.cumsum(kept_per_ring + 1)])  # +1: the closing vertex
    out = np.empty((new_offsets[-1], 2), dtype=coords.dtype)
    rank_in_ring = np.arange(len(rings)) - kept_before[rings]
    out[new_offsets[rings] + rank_in_ring] = coords[keep]
    out[new_offsets[1:] - 1] = out[new_offsets[:-1]]
    return out, new_offsets


def _cyclic_neighbours(ring_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ring_of, pos, lengths = _ring_layout(ring_offsets)
    open_len = (lengths - 1)[ring_of]  # ring without its closing duplicate
    start = ring_offsets[ring_of]
    closing = pos == open_len
    return start + (pos - 1) % open_len, start + (pos + 1) % open_len, closing


def drop_collinear(geoms: np.ndarray) -> np.ndarray:
    """Remove vertices where an axis-parallel ring goes straight on (and repeated points)."""
    geom_type, coords, offsets = shapely.to_ragged_array(geoms)
    ring_offsets = offsets[0]
    if len(coords) == 0:
        return np.asarray(geoms)
    _, nxt, closing = _cyclic_neighbours(ring_offsets)
    repeated = np.all(coords == coords[nxt], axis=1)
    coords, ring_offsets = _compact(coords, ring_offsets, ~closing & ~repeated)
    # Decided all at once: in a ring without repeats a vertex is kept iff it turns.
    prev, nxt, closing = _cyclic_neighbours(ring_offsets)
    x, y = coords[:, 0], coords[:, 1]
    straight = ((x[prev] == x) & (x == x[nxt])) | ((y[prev] == y) & (y == y[nxt]))
    coords, ring_offsets = _compact(coords, ring_offsets, ~closing & ~straight)
    return _from_ragged(geom_type, coords, (ring_offsets, *offsets[1:]))


def union_pieces(pieces: list) -> object:
    """Union the pieces of one region (disjoint interiors, integer axis-parallel edges).

    Noded pieces form a coverage, and GEOS's coverage union is several times
    faster than a general overlay. It trusts its input, so its result is checked
    cheaply (areas of integer polygons add up exactly) and the general union is
    the fallback; full validity is checked once, on every output, at export.
    """
    geoms = np.asarray(pieces, dtype=object)
    try:
        region = shapely.coverage_union_all(node_polygons(geoms))
        if region.geom_type not in ("Polygon", "MultiPolygon") or region.area != shapely.area(geoms).sum():
            raise ValueError("coverage union lost or gained area")
    except (shapely.errors.GEOSException, ValueError):
        region = shapely.union_all(geoms)
    return drop_collinear(np.array([region], dtype=object))[0]
