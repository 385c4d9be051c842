"""The vectorize stage: Zarr mosaic → one polygon per region → GPKG + GeoJSON.

The mosaic is read one chunk at a time (invariant 2: memory is O(chunk), plus
the regions still open across the current seam and the finished features),
polygonized per chunk, stitched across seams, and written once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.errors import JobConfigError
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.vectorize.export import regions_to_frame, write_vectors
from geoseg.vectorize.polygonize import polygonize_chunk
from geoseg.vectorize.seams import SeamMerger

__all__ = ["VectorOutputs", "select_classes", "vectorize_mosaic"]


@dataclass(frozen=True)
class VectorOutputs:
    """What the vectorize stage wrote.

    Attributes:
        gpkg: the GeoPackage, layer ``polygons``, in the mosaic CRS.
        geojson: the same features in EPSG:4326 (RFC 7946).
        features: number of features written.
        per_class: features per vectorized class name (0 for classes with none).
    """

    gpkg: Path
    geojson: Path
    features: int
    per_class: dict[str, int]


def select_classes(class_names: Sequence[str], classes: Sequence[str] | None) -> list[int]:
    """Class indices to vectorize: every class but 0 (background) unless named.

    Raises:
        JobConfigError: a name is not one of the mosaic's classes, or none is given.
    """
    if classes is None:
        return list(range(1, len(class_names)))
    if isinstance(classes, str):  # a lone name would otherwise be read letter by letter
        classes = [classes]
    valid = ", ".join(repr(n) for n in class_names)
    problems = [f"vectorize.classes: unknown class {name!r}; the mosaic's classes are {valid}"
                for name in classes if name not in class_names]
    if not classes:
        problems.append(f"vectorize.classes: names no class; choose from {valid} or leave it out")
    if problems:
        raise JobConfigError(problems)
    wanted = set(classes)
    return [i for i, name in enumerate(class_names) if name in wanted]


def _merge_chunks(mosaic: MosaicInfo, class_ids: list[int],
                  progress: Callable[[int, int], None] | None) -> list[tuple[int, object]]:
    merger = SeamMerger(mosaic.height, mosaic.width)
    row_offsets = range(0, mosaic.height, mosaic.chunk)
    regions: list[tuple[int, object]] = []
    for done, row_off in enumerate(row_offsets, start=1):
        height = min(mosaic.chunk, mosaic.height - row_off)
        for col_off in range(0, mosaic.width, mosaic.chunk):
            width = min(mosaic.chunk, mosaic.width - col_off)
            # Chunk-aligned reads: zarr decodes exactly one chunk per array.
            rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
            labels = np.asarray(mosaic.labels[rows, cols])
            valid = np.asarray(mosaic.valid[rows, cols])
            merger.add(polygonize_chunk(labels, valid, row_off, col_off, class_ids))
        regions.extend(merger.end_row())
        if progress is not None:
            progress(done, len(row_offsets))
    return regions


def vectorize_mosaic(
    mosaic_path: Path,
    out_dir: Path,
    *,
    classes: Sequence[str] | None = None,
    simplify_m: float = 0.0,
    min_area_m2: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> VectorOutputs:
    """Polygonize a mosaic: one feature per 4-connected region of each class.

    Regions that cross chunk seams come out as one feature; pixels whose
    ``valid`` is 0 belong to no feature; holes are kept.

    Args:
        mosaic_path: the Zarr mosaic written by the predict stage.
        out_dir: where ``polygons.gpkg`` and ``polygons.geojson`` go (created
            if missing; existing outputs are replaced only once complete).
        classes: class names to vectorize; default every class but index 0.
        simplify_m: simplification tolerance in metres (0: none). Touching
            polygons are simplified as one coverage and stay valid.
        min_area_m2: drop regions whose exact area is smaller.
        progress: called as ``progress(done, total)`` after each chunk row.

    Returns:
        The paths written and the feature counts.

    Raises:
        InputRasterError: the mosaic is missing or not a geoseg mosaic.
        JobConfigError: an unknown class name or a negative tolerance/area.
        StageError: writing an output failed.
    """
    problems = [f"vectorize.{name}: must be ≥ 0 (got {value!r})"
                for name, value in (("simplify_m", simplify_m), ("min_area_m2", min_area_m2))
                if not value >= 0]
    if problems:
        raise JobConfigError(problems)
    mosaic = open_mosaic(mosaic_path)
    class_ids = select_classes(mosaic.class_names, classes)
    # Nested so the pixel-space regions are freed once the table is built.
    frame = regions_to_frame(_merge_chunks(mosaic, class_ids, progress), transform=mosaic.transform,
                             crs=mosaic.crs, class_names=mosaic.class_names,
                             simplify_m=simplify_m, min_area_m2=min_area_m2)
    gpkg, geojson = write_vectors(frame, Path(out_dir))
    counts = frame["class"].value_counts()
    per_class = {mosaic.class_names[i]: int(counts.get(mosaic.class_names[i], 0)) for i in class_ids}
    return VectorOutputs(gpkg=gpkg, geojson=geojson, features=len(frame), per_class=per_class)
