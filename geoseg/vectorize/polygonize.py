"""Polygonize one mosaic chunk into per-region pieces.

Each chunk is split into 4-connected components per class (``scipy.ndimage.label``)
and every component becomes one polygon (``rasterio.features.shapes`` with
connectivity 4, the same rule, so a component is never split or joined
differently by the two libraries). What :class:`~geoseg.vectorize.seams.SeamMerger`
needs to stitch chunks back together travels with the pieces: the component id
of every pixel on the chunk's four edges and the class of every component.

Geometries are kept in *global pixel coordinates* (x = column, y = row of the
whole mosaic, pixel corners on integers) until export. Integer coordinates are
exact in floating point, so the two sides of a chunk seam carry bit-identical
vertices and the seam union is exact; applying the mosaic's affine transform per
chunk instead would give each chunk its own rounding and leave slivers at seams
for pixel sizes such as 0.3 m that binary floats cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage

__all__ = ["ChunkPieces", "polygonize_chunk"]

# 4-connectivity: pixels that touch only at a corner are different regions.
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class ChunkPieces:
    """The polygons of one chunk and its edges, in global pixel coordinates.

    Component ids are local to the chunk: 1..``count``; 0 means "no region"
    (invalid pixel, or a class that is not vectorized).

    Attributes:
        row_off, col_off, height, width: the chunk's window in the mosaic.
        classes: ``classes[i]`` is the class index of component ``i``
            (``classes[0]`` is unused).
        top, bottom, left, right: component id of each pixel on that edge,
            ``top``/``bottom`` left to right, ``left``/``right`` top to bottom.
        polygons: ``polygons[i]`` is component ``i``'s polygon (``polygons[0]``
            is None).
    """

    row_off: int
    col_off: int
    height: int
    width: int
    classes: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray
    polygons: list

    @property
    def count(self) -> int:
        """Number of components (regions) in the chunk."""
        return len(self.classes) - 1


def label_components(labels: np.ndarray, valid: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label the 4-connected regions of every vectorized class in one block.

    Returns ``(components, classes)``: an int32 array of component ids
    (0 outside every region) and the class index of each id.
    """
    keep = valid.astype(bool) & np.isin(labels, class_ids)
    components = np.zeros(labels.shape, dtype=np.int32)
    classes = [0]
    # Only the classes present in this block cost a labelling pass.
    for class_id in np.unique(labels[keep]):
        mask = keep & (labels == class_id)
        local, count = ndimage.label(mask, structure=FOUR_CONNECTED)
        components[mask] = local[mask] + (len(classes) - 1)
        classes.extend([int(class_id)] * count)
    return components, np.asarray(classes, dtype=np.int64)


def _polygon_from_geojson(geometry: dict):
    # shapely.geometry.shape walks every coordinate in Python; building the
    # rings from arrays is about twice as fast, and this runs once per region.
    rings = [shapely.linearrings(np.asarray(ring, dtype=np.float64)) for ring in geometry["coordinates"]]
    return shapely.polygons(rings[0], holes=rings[1:] or None)


def _component_polygons(components: np.ndarray, count: int, row_off: int, col_off: int) -> list:
    polygons: list = [None] * (count + 1)
    transform = Affine.translation(col_off, row_off)
    for geojson, value in shapes(components, mask=components > 0, connectivity=4, transform=transform):
        index = int(value)
        polygon = _polygon_from_geojson(geojson)
        # A 4-connected component is one polygon for GDAL's 4-connected
        # polygonizer; the union only guards against a future GDAL splitting it.
        polygons[index] = polygon if polygons[index] is None else shapely.union(polygons[index], polygon)
    return polygons


def polygonize_chunk(labels: np.ndarray, valid: np.ndarray, row_off: int, col_off: int, class_ids) -> ChunkPieces:
    """Polygonize one chunk of the mosaic.

    Args:
        labels: class index per pixel of the chunk (any integer dtype).
        valid: nonzero where the pixel holds data; other pixels are never part
            of a polygon.
        row_off: the chunk's first row in the mosaic, in pixels.
        col_off: the chunk's first column in the mosaic, in pixels.
        class_ids: the class indices to vectorize.

    Returns:
        The chunk's pieces, ready for :class:`~geoseg.vectorize.seams.SeamMerger`.
    """
    labels = np.asarray(labels)
    valid = np.asarray(valid)
    if labels.shape != valid.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape!r} and valid {valid.shape!r} must be the same 2-D shape")
    components, classes = label_components(labels, valid, np.asarray(list(class_ids)))
    height, width = components.shape
    polygons = _component_polygons(components, len(classes) - 1, row_off, col_off)
    return ChunkPieces(
        row_off=int(row_off),
        col_off=int(col_off),
        height=height,
        width=width,
        classes=classes,
        top=components[0].copy(),
        bottom=components[-1].copy(),
        left=components[:, 0].copy(),
        right=components[:, -1].copy(),
        polygons=polygons,
    )
