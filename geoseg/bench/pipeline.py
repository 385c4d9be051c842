"""``geoseg bench pipeline``: every step after prediction on a synthetic survey whose prediction is known.

No model runs: the mosaic is written chunk by chunk straight from
:func:`geoseg.synthetic.survey_blocks.survey_block` (the "prediction"), and the
reference label GeoTIFF block by block from
:func:`~geoseg.synthetic.survey_blocks.reference_block` (the same map with 2% of
pixels flipped), so a scene of any size is made in flat memory. Then each step is
timed on its own, with its own memory sampler:

- ``vectorize``: :func:`~geoseg.vectorize.classes.vectorize_mosaic`, no instances;
- ``vectorize_instances``: the same with the instance numbering pass (``instances.parquet``);
- ``evaluate``: :func:`~geoseg.stages.evaluate.mosaic_confusion` (bands as Ray tasks when ``workers`` > 1);
- ``overviews``: :func:`~geoseg.io.overviews.build_overviews`.

Each step reports seconds, MPix/s, features and features/s, its peak memory
(summed over the process tree and per process) and ``other_cpu_share``: the share
of all cores *other* work used while it ran (see :mod:`geoseg.bench.measure`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geoseg.bench.measure import MemorySampler
from geoseg.errors import GeosegError, JobConfigError
from geoseg.io.mosaic import MosaicInfo, create_mosaic, done_chunks, mark_done, open_mosaic, write_block
from geoseg.io.overviews import build_overviews
from geoseg.io.raster import iter_blocks
from geoseg.runtime.session import ray_output_to
from geoseg.stages.evaluate import mosaic_confusion
from geoseg.synthetic.blocks import PIXEL_SIZE, SCENE_CRS
from geoseg.synthetic.layout import DEMO_CLASSES
from geoseg.synthetic.survey_blocks import BlockWindow, reference_block, survey_block
from geoseg.vectorize.classes import in_process, vectorize_mosaic

__all__ = ["PipelineSettings", "bench_pipeline", "run_pipeline_command", "write_pipeline_scene"]

TRANSFORM = Affine(PIXEL_SIZE, 0, 500000.0, 0, -PIXEL_SIZE, 5000000.0)
REFERENCE_BLOCK = 512  # px: GeoTIFF tile side of the reference


@dataclass(frozen=True)
class PipelineSettings:
    """What ``geoseg bench pipeline`` runs: an ``size``² scene in ``chunk``² chunks, ``workers`` Ray tasks."""

    size: int = 4096
    workers: int = 1
    chunk: int = 448
    out: Path | None = None  # None: a temporary folder, removed afterwards
    seed: int = 0
    simplify_m: float = 0.0  # vectorize.simplify_m of both vectorize steps

    def check(self) -> None:
        """Every bad value at once, one line each, as the CLI's flags."""
        problems = [
            f"--{name}: {value} is below {least}; give {least} or more"
            for name, value, least in (
                ("size", self.size, 16),
                ("workers", self.workers, 1),
                ("chunk", self.chunk, 16),
                ("simplify-m", self.simplify_m, 0),
            )
            if not value >= least
        ]
        if problems:
            raise JobConfigError("\n".join(f"geoseg bench pipeline: {line}" for line in problems))


@dataclass(frozen=True)
class SceneFiles:
    """The written scene: the mosaic (the known prediction) and the reference label GeoTIFF."""

    mosaic: Path
    reference: Path


@dataclass(frozen=True)
class StepResult:
    """One timed step: its seconds, the features it made (None where it makes none) and its sampler."""

    seconds: float
    features: int | None
    memory: MemorySampler


def write_pipeline_scene(out: Path, *, size: int, chunk: int, seed: int = 0) -> SceneFiles:
    """Write the mosaic (chunk by chunk, each marked done) and the reference GeoTIFF (block by block)."""
    out.mkdir(parents=True, exist_ok=True)
    mosaic = create_mosaic(
        out / "mosaic.zarr",
        height=size,
        width=size,
        chunk=chunk,
        crs=CRS.from_string(SCENE_CRS),
        transform=TRANSFORM,
        class_names=DEMO_CLASSES,
        fingerprint={"bench": "pipeline", "seed": seed},
    )
    for row, col, h, w in mosaic.chunk_windows():
        labels = survey_block(BlockWindow(row, col, h, w), seed)
        write_block(mosaic, row, col, labels, np.ones_like(labels))
        mark_done(mosaic, row, col)
    return SceneFiles(mosaic=mosaic.path, reference=_write_reference(out / "reference.tif", size, seed))


def existing_scene(out: Path, *, size: int, chunk: int, seed: int = 0) -> SceneFiles | None:
    """The scene an earlier run wrote in ``out`` with the same size, chunk and seed, if complete."""
    mosaic_path, reference = out / "mosaic.zarr", out / "reference.tif"
    if not (mosaic_path.is_dir() and reference.is_file()):
        return None
    try:
        mosaic = open_mosaic(mosaic_path)
    except GeosegError:
        return None
    same = (mosaic.height, mosaic.width, mosaic.chunk, mosaic.fingerprint) == (
        size,
        size,
        chunk,
        {"bench": "pipeline", "seed": seed},
    )
    return SceneFiles(mosaic=mosaic_path, reference=reference) if same and not _missing_chunks(mosaic) else None


def _missing_chunks(mosaic: MosaicInfo) -> bool:
    return len(done_chunks(mosaic)) < mosaic.grid[0] * mosaic.grid[1]


def _write_reference(path: Path, size: int, seed: int) -> Path:
    """The reference label raster, tiled and compressed, one GeoTIFF block at a time (temporary name, then renamed)."""
    tmp = path.with_name(path.name + ".partial")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": 1,
        "dtype": "uint8",
        "crs": SCENE_CRS,
        "transform": TRANSFORM,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": min(REFERENCE_BLOCK, 16 * (size // 16)),
        "blockysize": min(REFERENCE_BLOCK, 16 * (size // 16)),
        "BIGTIFF": "IF_SAFER",
    }
    # Whole blocks per write and a small cache: GDAL flushes as it goes, memory stays flat.
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
        for window in iter_blocks(size, size, profile["blockxsize"]):
            block = BlockWindow(int(window.row_off), int(window.col_off), int(window.height), int(window.width))
            dst.write(reference_block(block, seed), 1, window=window)
    os.replace(tmp, path)
    return path


def _timed(step: Callable[[], int | None]) -> StepResult:
    with MemorySampler(interval=0.5) as memory:
        started = time.perf_counter()
        features = step()
        seconds = time.perf_counter() - started
    return StepResult(seconds=seconds, features=features, memory=memory)


def _step_fields(result: StepResult, pixels: int) -> dict[str, Any]:
    memory = result.memory
    return {
        "seconds": round(result.seconds, 3),
        "mpix_per_s": round(pixels / 1e6 / result.seconds, 3) if result.seconds > 0 else None,
        "features": result.features,
        "features_per_s": (
            round(result.features / result.seconds, 1) if result.features is not None and result.seconds > 0 else None
        ),
        "peak_mb": round(memory.peak_total / 2**20, 1),
        "peak_driver_mb": round(memory.peak_driver / 2**20, 1),
        "peak_by_process_mb": {name: round(value / 2**20, 1) for name, value in memory.peak_by_name.items()},
        "other_cpu_share": round(memory.other_cpu_share, 3),
    }


@contextmanager
def _work_folder(out: Path | None) -> Iterator[Path]:
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-pipeline-") as tmp:
        yield Path(tmp)


def _run_steps(scene: SceneFiles, out: Path, workers: int, simplify_m: float) -> tuple[dict[str, StepResult], float]:
    """Time each step alone; the steps and evaluate's pixel agreement (a check that the reference differs).

    With ``workers`` > 1 every step runs its pieces as Ray tasks inside one Ray session, so Ray's
    start is not timed (the workers' first imports are, as in a job).
    """
    from geoseg.runtime import iter_tasks, ray_session

    def run_tasks(function, arguments):
        return iter_tasks(function, arguments, cpus=1) if workers > 1 else in_process(function, arguments)

    steps: dict[str, StepResult] = {}
    confusion: list[np.ndarray] = []

    def evaluate() -> None:
        confusion.append(mosaic_confusion(scene.mosaic, scene.reference, workers=workers, cpus=1)[0])

    def overviews() -> None:
        build_overviews(scene.mosaic, run_parallel=lambda f, a: list(run_tasks(f, a)), workers=workers)

    with ray_session() if workers > 1 else nullcontext():
        steps["vectorize"] = _timed(
            lambda: vectorize_mosaic(scene.mosaic, out / "vectors", simplify_m=simplify_m, run_tasks=run_tasks).features
        )
        steps["vectorize_instances"] = _timed(
            lambda: (
                vectorize_mosaic(
                    scene.mosaic,
                    out / "vectors_instances",
                    instances_table=out / "instances.parquet",
                    simplify_m=simplify_m,
                    run_tasks=run_tasks,
                ).features
            )
        )
        steps["evaluate"] = _timed(evaluate)
        steps["overviews"] = _timed(overviews)
    return steps, float(np.trace(confusion[0]) / max(1, confusion[0].sum()))


def bench_pipeline(settings: PipelineSettings, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the scene, time the steps; the one JSON-ready record (see the module's docstring)."""
    settings.check()
    pixels = settings.size**2
    with _work_folder(settings.out) as out:
        started = time.perf_counter()
        scene = existing_scene(out, size=settings.size, chunk=settings.chunk, seed=settings.seed)
        if scene is None:
            log(f"bench pipeline: writing a {settings.size}² mosaic and reference under {out}")
            scene = write_pipeline_scene(out, size=settings.size, chunk=settings.chunk, seed=settings.seed)
        else:
            log(f"bench pipeline: reusing the {settings.size}² mosaic and reference under {out}")
        write_s = time.perf_counter() - started
        with ray_output_to(out / "ray.log"):
            steps, agreement = _run_steps(scene, out, settings.workers, settings.simplify_m)
    peak_by_process: dict[str, int] = {}
    for step in steps.values():
        for name, value in step.memory.peak_by_name.items():
            peak_by_process[name] = max(peak_by_process.get(name, 0), value)
    return {
        "size": settings.size,
        "workers": settings.workers,
        "chunk": settings.chunk,
        "simplify_m": settings.simplify_m,
        "write_s": round(write_s, 3),
        "pixel_agreement": round(agreement, 4),
        **{name: _step_fields(step, pixels) for name, step in steps.items()},
        "peak_mb": round(max(step.memory.peak_total for step in steps.values()) / 2**20, 1),
        "peak_by_process_mb": {name: round(value / 2**20, 1) for name, value in sorted(peak_by_process.items())},
        "memory_metric": steps["vectorize"].memory.metric,
        "other_cpu_share": round(max(step.memory.other_cpu_share for step in steps.values()), 3),
    }


def run_pipeline_command(args: Any) -> int:
    """The CLI's ``bench pipeline``: progress on stderr, the one JSON line on stdout."""
    import json
    import sys

    settings = PipelineSettings(
        size=args.size,
        workers=args.workers,
        chunk=args.chunk,
        out=Path(args.out) if args.out else None,
        simplify_m=args.simplify_m,
    )
    result = bench_pipeline(settings, log=lambda message: print(message, file=sys.stderr, flush=True))
    print(json.dumps(result), flush=True)
    return 0
