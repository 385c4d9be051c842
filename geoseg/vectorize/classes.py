"""Class polygons of a semantic mosaic: Zarr mosaic → one polygon per region → GPKG + GeoJSON.

The vectorize stage runs it. The mosaic is read one chunk at a time
(invariant 2: memory is O(chunk), plus the regions still open across the
current seam), polygonized per chunk and stitched across seams. Without
instance ids or simplification, bands of chunk rows are polygonized as
independent tasks (in parallel on Ray, see :mod:`geoseg.vectorize.bands`) and
each band's features are written as soon as the band and the seam above it are
done (see :mod:`geoseg.vectorize.stream`); with either, every region is needed
first (ids go by first pixel over the whole scene; simplification is one
coverage with one tolerance), so the features are held and written in one
batch at the end.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from geoseg.errors import JobConfigError
from geoseg.io.heap import release_free_memory
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.io.pixel_arrays import labels_view
from geoseg.vectorize.band_ids import (
    IdsSummary,
    number_bands,
    prepare_instance_array,
    write_band_ids,
    write_numbered_outputs,
)
from geoseg.vectorize.band_simplify import OpenPieces, scene_tolerance
from geoseg.vectorize.bands import (
    BandSummary,
    band_as_chunk,
    band_features,
    band_geojson,
    band_open_simplified,
    band_requests,
    vectorize_band,
)
from geoseg.vectorize.export import (
    empty_frame,
    finish_vectors,
    open_vectors,
    regions_to_frame,
)
from geoseg.vectorize.seams import SeamMerger

__all__ = ["RunTasks", "VectorOutputs", "in_process", "select_classes", "vectorize_mosaic"]

# Runs ``function(*args)`` for each ``args``; yields the results in the arguments' order, each as soon
# as it and those before it are done (Ray tasks in a runtime, or one after another here).
RunTasks = Callable[[Callable[..., object], Sequence[tuple]], Iterable[object]]


def in_process(function: Callable[..., object], arguments: Sequence[tuple]) -> Iterator[object]:
    """The :data:`RunTasks` of one process: each call in turn, lazily (one band's results held at a time)."""
    return (function(*args) for args in arguments)


@dataclass(frozen=True)
class VectorOutputs:
    """What the vectorize stage wrote.

    Attributes:
        vectors: the GeoPackage (layer ``polygons``) or GeoParquet, in the mosaic CRS.
        geojson: the same features in EPSG:4326 (RFC 7946).
        features: number of features written.
        per_class: features per vectorized class name (0 for classes with none).
        instances: number of instance ids written (None unless asked for).
        instance_table: the instance table (None unless asked for).
    """

    vectors: Path
    geojson: Path
    features: int
    per_class: dict[str, int]
    instances: int | None = None
    instance_table: Path | None = None


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
    problems = [
        f"vectorize.classes: unknown class {name!r}; the mosaic's classes are {valid}"
        for name in classes
        if name not in class_names
    ]
    if not classes:
        problems.append(f"vectorize.classes: names no class; choose from {valid} or leave it out")
    if problems:
        raise JobConfigError(problems)
    wanted = set(classes)
    return [i for i, name in enumerate(class_names) if name in wanted]


def vectorize_mosaic(
    mosaic_path: Path,
    out_dir: Path,
    *,
    classes: Sequence[str] | None = None,
    simplify_m: float = 0.0,
    min_area_m2: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    instances_table: Path | None = None,
    fmt: str = "gpkg",
    run_tasks: RunTasks = in_process,
    labels: str = "labels",
) -> VectorOutputs:
    """Polygonize a mosaic: one feature per 4-connected region of each class.

    Regions that cross chunk seams come out as one feature; pixels whose
    ``valid`` is 0 belong to no feature; holes are kept.

    With ``instances_table``, every region also gets an id, 1..N in row-major
    order of its first pixel, the same whatever the chunk size: a second pass
    writes it to ``mosaic.zarr/instances`` (uint32, 0: no region) and the table
    (:mod:`geoseg.io.instances`), and the features carry it as an ``id`` column
    and come in id order (see :mod:`geoseg.vectorize.components`).

    Args:
        mosaic_path: the Zarr mosaic written by the predict stage.
        out_dir: where ``polygons.gpkg`` (or ``.parquet``) and ``polygons.geojson`` go (created
            if missing; existing outputs are replaced only once complete).
        classes: class names to vectorize; default every class but index 0.
        simplify_m: simplification tolerance in metres on the ground, in any
            CRS (0: none). Touching polygons are simplified as one coverage and stay valid.
        min_area_m2: drop regions whose exact ground area is smaller (see
            :mod:`geoseg.vectorize.metres`).
        progress: called as ``progress(done, total)`` after each chunk row
            (of each pass: ``total`` is twice the chunk rows with instances).
        instances_table: where to write ``instances.parquet``; None: no instances.
        fmt: ``gpkg`` (GeoPackage) or ``parquet`` (GeoParquet) for the mosaic-CRS file.
        run_tasks: runs the bands of chunk rows (:mod:`geoseg.vectorize.bands`) of a vectorize
            without ids or simplification, e.g. as Ray tasks; default: here, one after another.
        labels: another class-coded array of the mosaic to polygonize instead of ``labels``, its
            classes named by its ``class_names`` attribute (the flood extent); without ids or simplification.

    Returns:
        The paths written and the feature counts.

    Raises:
        InputRasterError: the mosaic is missing or not a geoseg mosaic.
        JobConfigError: an unknown class name or a negative tolerance/area.
        StageError: writing an output failed.
    """
    _check_non_negative(simplify_m=simplify_m, min_area_m2=min_area_m2)
    mosaic = labels_view(open_mosaic(mosaic_path, mode="r" if instances_table is None else "r+"), labels)
    if labels != "labels" and (instances_table is not None or simplify_m > 0):
        raise ValueError(f"only the labels array can be numbered or simplified (asked for {labels!r})")
    class_ids = select_classes(mosaic.class_names, classes)
    tolerance = scene_tolerance(mosaic.transform, mosaic.crs, mosaic.height, mosaic.width, simplify_m)
    tolerance = tolerance if simplify_m > 0 else 0.0
    if instances_table is None:
        return _write_banded_features(
            mosaic, class_ids, min_area_m2, progress, Path(out_dir), fmt, run_tasks, tolerance
        )
    return _write_banded_ids(
        mosaic, class_ids, min_area_m2, progress, Path(out_dir), fmt, run_tasks, Path(instances_table), tolerance
    )


def _check_non_negative(**values: float) -> None:
    """Refuse a negative (or NaN) tolerance or area, naming every bad setting at once.

    Raises:
        JobConfigError: one problem per setting that is not ≥ 0.
    """
    problems = [f"vectorize.{name}: must be ≥ 0 (got {value!r})" for name, value in values.items() if not value >= 0]
    if problems:
        raise JobConfigError(problems)


def _write_banded_features(
    mosaic: MosaicInfo,
    class_ids: list[int],
    min_area_m2: float,
    progress: Callable[[int, int], None] | None,
    out_dir: Path,
    fmt: str,
    run_tasks: RunTasks,
    simplify_tolerance: float = 0.0,
) -> VectorOutputs:
    """Every band as a task (:func:`~geoseg.vectorize.bands.vectorize_band`), written in band order.

    Per band: its finished features (GeoJSON rendered by the task), then the regions that close
    once its top seam is joined to the bands above. Parts left by a killed run of the same mosaic
    and settings are reused; they are removed once the outputs are complete. With a tolerance each
    band is simplified by its task (:mod:`~geoseg.vectorize.band_simplify`) and a joined region is
    the union of its simplified pieces.
    """
    parts_dir = out_dir / ".vectorize-parts"
    requests = band_requests(mosaic, parts_dir, class_ids, min_area_m2, simplify_tolerance=simplify_tolerance)
    across = SeamMerger(mosaic.height, mosaic.width)  # one "chunk" per band: joins the open regions
    pieces = OpenPieces() if simplify_tolerance > 0 else None
    counts: Counter[str] = Counter()
    empty = empty_frame(mosaic.crs)
    with open_vectors(out_dir, empty, fmt=fmt) as writer:
        summaries = cast(Iterable[BandSummary], run_tasks(vectorize_band, [(r,) for r in requests]))
        for request, summary in zip(requests, summaries, strict=True):
            across.add(band_as_chunk(request, summary, mosaic.width))
            if pieces is not None:
                pieces.add(*band_open_simplified(request))
            closed = across.end_row()
            joined = regions_to_frame(
                closed,
                transform=mosaic.transform,
                crs=mosaic.crs,
                class_names=mosaic.class_names,
                min_area_m2=min_area_m2,
                geoms=None if pieces is None else pieces.take(closed),
            )
            # The band's own features, a slice at a time (its GeoJSON rendered by the task), then the
            # regions its top seam closed: the order the one-process writer gives.
            for frame in band_features(request, empty):
                writer.write_features(frame)
                counts.update(frame["class"])
            for text, rows in band_geojson(request):
                writer.write_geojson(text, summary.declared, rows)
            writer.write(joined)
            counts.update(joined["class"])
            release_free_memory()  # the band's transients: else the driver keeps the high-water mark
            if progress is not None:
                progress(-(-request.stop_row // mosaic.chunk), mosaic.grid[0])
    vectors, geojson_path = finish_vectors(writer, fmt)
    shutil.rmtree(parts_dir, ignore_errors=True)
    per_class = _per_class(counts, mosaic.class_names, class_ids)
    return VectorOutputs(vectors=vectors, geojson=geojson_path, features=writer.features, per_class=per_class)


def _write_banded_ids(
    mosaic: MosaicInfo,
    class_ids: list[int],
    min_area_m2: float,
    progress: Callable[[int, int], None] | None,
    out_dir: Path,
    fmt: str,
    run_tasks: RunTasks,
    table_path: Path,
    simplify_tolerance: float = 0.0,
) -> VectorOutputs:
    """Instance ids by bands (:mod:`geoseg.vectorize.band_ids`): both passes as tasks, outputs in id order."""
    parts_dir = out_dir / ".vectorize-parts"
    requests = band_requests(
        mosaic, parts_dir, class_ids, min_area_m2, instances=True, simplify_tolerance=simplify_tolerance
    )
    arguments = [(request,) for request in requests]
    regions = cast(Iterable[BandSummary], run_tasks(vectorize_band, arguments))
    numbering = number_bands(mosaic, requests, regions, min_area_m2, progress)
    prepare_instance_array(mosaic, table_path)
    numbered = cast(Iterable[IdsSummary], run_tasks(write_band_ids, arguments))
    empty = empty_frame(mosaic.crs)
    empty.insert(0, "id", pd.Series([], dtype=np.uint32))
    with open_vectors(out_dir, empty, fmt=fmt) as writer:
        counts = write_numbered_outputs(mosaic, requests, numbered, writer, numbering, table_path, progress)
    vectors, geojson = finish_vectors(writer, fmt)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return VectorOutputs(
        vectors=vectors,
        geojson=geojson,
        features=writer.features,
        per_class=_per_class(counts, mosaic.class_names, class_ids),
        instances=numbering.count,
        instance_table=table_path,
    )


def _per_class(counts: Counter[str], class_names: Sequence[str], class_ids: list[int]) -> dict[str, int]:
    """Features per vectorized class name, 0 for a class with none."""
    return {class_names[i]: int(counts.get(class_names[i], 0)) for i in class_ids}
