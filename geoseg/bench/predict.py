"""``geoseg bench predict``: time the real predict stage against the model alone.

The benchmark synthesises an N×N RGB GeoTIFF (written block by block, so a
20000² scene costs no more memory than a 512² one), saves a randomly
initialised checkpoint, runs :func:`geoseg.stages.predict.run_predict` on it
and compares the rate with the same model forwarding the same batches in a
plain loop, timed before and after the stage (``model_only_before_mpix_s``,
``model_only_after_mpix_s``; the mean is the yardstick: a shared machine's speed
drifts by several percent over minutes, and their gap shows by how much).
While the stage runs a thread samples the memory of this process and of every
process it started (the embedded Ray's GCS, raylet, workers and model actors),
so the peak is what the whole job cost, not just the driver.

Rates are per *scene* pixel (N² / seconds) for both numbers, so
``efficiency = end_to_end_mpix_s / model_only_mpix_s`` is the share of the
model's speed the pipeline keeps once actor start-up, model load, reading,
mirroring, normalising, argmax, cropping, Zarr writes and overviews are paid
for. Starting the embedded Ray itself is timed apart (``ray_start_s``): a
cluster has Ray running already. ``steady_mpix_s`` times only the tiles after
the first batch (from the mtimes of the mosaic's per-chunk ``done`` markers),
so it leaves out start-up and the tail as well.

Timings on a shared machine are only as good as its quiet:
``other_cpu_share`` (and ``model_only_other_cpu_share``) is the share of all
cores that *other* processes used while the stage (or the model-only loop)
ran; compare runs only where both are near 0.

Files (all under ``workdir``):

- ``bench_scene_<N>_v1.tif``: the synthetic scene. Reused when a valid one is
  already there. Removed at the end only if this run created it and ``keep``
  is false; so pass ``keep=True`` (``--keep``) once to cache a big scene.
- ``run-<pid>-<time>/``: checkpoint and mosaic of this run; always removed.
- With ``workdir=None`` a temporary folder is used and removed unless ``keep``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from geoseg.bench.measure import MemorySampler, memory_fields, top_processes, wait_until_quiet
from geoseg.bench.model_only import model_only_seconds, random_checkpoint
from geoseg.io.heap import release_free_memory
from geoseg.synthetic.blocks import CLASSES, PIXEL_SIZE, scene_path, usable_scene, write_synthetic_scene

__all__ = ["bench_predict", "ensure_scene"]


def _done_times(mosaic: Path) -> list[float]:
    """Modification times of the mosaic's per-chunk ``done`` markers, sorted.

    Each is written by the actor right after its chunk's pixels, so they time
    tile completions from inside the run without instrumenting it.
    """
    times = [
        p.stat().st_mtime
        for p in (mosaic / "done").rglob("*")
        if p.is_file() and not p.name.startswith(".z") and p.name != "zarr.json"
    ]
    return sorted(times)


def _sig(value: float, digits: int = 4) -> float:
    """Round to significant digits: rates of a tiny test scene and of a GPU run both stay readable."""
    return float(f"{value:.{digits}g}")


@contextlib.contextmanager
def _timed_ray_session(address: str | None):
    """Start (or attach to) Ray and yield how long that took."""
    from geoseg.runtime import ray_session  # Ray is imported only when a benchmark runs

    started = time.perf_counter()
    with ray_session(address):
        yield time.perf_counter() - started


@dataclass(frozen=True)
class _Settings:
    """What one benchmark run is asked for: the job's tiling, batches, runtime and model, the baseline's batches."""

    size: int  # scene pixels a side
    tile_size: int
    halo: int
    batch_size: int
    workers: int
    cpus_per_worker: int
    use_gpu: bool
    arch: str
    encoder: str
    options: dict
    model_only_batches: int
    address: str | None


@dataclass
class _Measured:
    """What one benchmark run measured, before it becomes rates and the JSON line."""

    tiles: int  # tiles in the plan
    end_to_end_s: float  # the predict stage, Ray start-up excluded
    ray_start_s: float
    wall_start: float  # time.time() at the stage's start: the epoch of the ``done`` mtimes
    done: list[float]  # mtimes of the per-chunk ``done`` markers, sorted
    memory: MemorySampler
    quiet_wait_s: float
    model_only_per_tile_s: float  # the mean of the timings before and after the stage
    model_only_per_tile_before_s: float
    model_only_per_tile_after_s: float
    model_only_tiles_timed: int
    model_only_other_cpu: float
    load_before: float
    load_after: float


def ensure_scene(scene: Path, size: int, log) -> bool:
    """Reuse a valid cached scene or write one; return whether this run wrote it."""
    if scene.exists() and usable_scene(scene, size):
        log(f"bench: reusing {scene}")
        return False
    log(f"bench: writing a {size}x{size} synthetic scene to {scene}")
    started = time.perf_counter()
    write_synthetic_scene(scene, size)
    log(f"bench: scene written in {time.perf_counter() - started:.0f} s ({scene.stat().st_size / 1e6:.0f} MB on disk)")
    return True


def _bench_job(run_dir: Path, scene: Path, checkpoint: Path, settings: _Settings):
    """The predict-only job the benchmark runs, writing under ``run_dir/out``."""
    from geoseg.config import Job

    return Job.model_validate(
        {
            "name": "bench",
            "output_dir": str(run_dir / "out"),
            "classes": CLASSES,
            "stages": ["predict"],
            "model": {"arch": settings.arch, "encoder": settings.encoder, "options": settings.options},
            "tiling": {"tile_size": settings.tile_size, "halo": settings.halo},
            "predict": {"scene": str(scene), "checkpoint": str(checkpoint), "batch_size": settings.batch_size},
            "runtime": {
                "workers": settings.workers,
                "cpus_per_worker": settings.cpus_per_worker,
                "use_gpu": settings.use_gpu,
            },
        }
    )


def _measure(job, scene: Path, checkpoint: Path, settings: _Settings, log) -> _Measured:
    """Time the model alone on the same tiles, run the predict stage under the memory sampler, time the model again.

    The machine's speed drifts by several percent over minutes (a virtual machine shares its host), so the
    model alone is timed on both sides of the stage and the mean is the yardstick.
    """
    from geoseg.stages.predict import run_predict
    from geoseg.tiling import plan_tiles

    tiles = plan_tiles(settings.size, settings.size, tile_size=settings.tile_size, halo=settings.halo)
    mosaic = Path(job.output_dir) / "mosaic.zarr"
    before = _model_only(checkpoint, scene, mosaic, tiles, settings)
    release_free_memory()  # the loop's freed tensors, not to be counted in the driver's peak below
    load_before = os.getloadavg()[0]

    # Ray itself is started before the clock: a cluster has it running already, and
    # the embedded start-up is a once-per-job cost, reported as ray_start_s.
    # PSS walks each process's page tables under its memory-map lock, stalling a model actor that maps and
    # unmaps its tensors: sampled at every new RSS high (30 times in a 67 s run at 4096²) it cost the steady
    # rate ~4% (0.86 of the model against 0.90 with 7 samples). Steady-state wobbles under 2% do not trigger it.
    with MemorySampler(pss_every=15.0, rise=0.02) as memory, _timed_ray_session(settings.address) as ray_start_s:
        wall_start = time.time()
        started = time.perf_counter()
        run_predict(job, address=settings.address, log=log)
        end_to_end = time.perf_counter() - started
    done = _done_times(mosaic)

    # Ray's processes take seconds to exit; the model-only loop must not share the CPU with them.
    quiet_wait = wait_until_quiet(psutil.Process())
    after = _model_only(checkpoint, scene, mosaic, tiles, settings)
    return _Measured(
        tiles=len(tiles),
        end_to_end_s=end_to_end,
        ray_start_s=ray_start_s,
        wall_start=wall_start,
        done=done,
        memory=memory,
        quiet_wait_s=quiet_wait,
        model_only_per_tile_s=(before[0] + after[0]) / 2,
        model_only_per_tile_before_s=before[0],
        model_only_per_tile_after_s=after[0],
        model_only_tiles_timed=after[1],
        model_only_other_cpu=max(before[2], after[2]),
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )


def _model_only(checkpoint: Path, scene: Path, mosaic: Path, tiles, settings: _Settings) -> tuple[float, int, float]:
    return model_only_seconds(
        checkpoint,
        scene,
        mosaic,
        tiles,
        batch_size=settings.batch_size,
        device="cuda" if settings.use_gpu else "cpu",
        threads=settings.cpus_per_worker,
        max_batches=settings.model_only_batches,
    )


def _steady_state(m: _Measured, batch_size: int, mpix: float) -> tuple[float | None, float | None, float | None]:
    """Steady rate (MPix/s), seconds to the first batch's last tile, seconds after the last tile.

    Steady state runs from the end of the first batch to the last tile written,
    i.e. without Ray start-up, actor start, model load and the first batch. Each
    is ``None`` when the ``done`` markers cannot tell it.
    """
    done = m.done
    first = min(batch_size, len(done) - 1)
    steady_rate = first_batch_s = None
    if len(done) >= 2 and first >= 1 and done[-1] > done[first - 1]:
        per_tile_steady = (done[-1] - done[first - 1]) / (len(done) - first)
        steady_rate = mpix / (per_tile_steady * m.tiles)
        first_batch_s = done[first - 1] - m.wall_start
    # After the last tile: stopping the actors, overviews, the final rename.
    tail_s = m.end_to_end_s - (done[-1] - m.wall_start) if done else None
    return steady_rate, first_batch_s, tail_s


def _device_name(use_gpu: bool) -> str:
    """``cuda:<GPU name>`` when the run used a GPU, else ``cpu``."""
    import torch

    if use_gpu and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def _report(m: _Measured, settings: _Settings) -> dict:
    """The JSON line: settings, rates per scene pixel, memory, contention and the machine."""
    import torch

    mpix = settings.size * settings.size / 1e6
    e2e_rate = mpix / m.end_to_end_s
    model_rate = mpix / (m.model_only_per_tile_s * m.tiles)
    steady_rate, first_batch_s, tail_s = _steady_state(m, settings.batch_size, mpix)
    return {
        "bench": "predict",
        "size": settings.size,
        "tile": settings.tile_size,
        "halo": settings.halo,
        "core": settings.tile_size - 2 * settings.halo,
        "tiles": m.tiles,
        "workers": settings.workers,
        "batch_size": settings.batch_size,
        "device": _device_name(settings.use_gpu),
        "arch": settings.arch,
        "encoder": settings.encoder,
        "options": settings.options,
        "end_to_end_s": round(m.end_to_end_s, 2),
        "ray_start_s": round(m.ray_start_s, 2),
        "end_to_end_mpix_s": _sig(e2e_rate),
        "model_only_mpix_s": _sig(model_rate),
        "model_only_tiles_timed": m.model_only_tiles_timed,
        # Each side of the stage: apart by more than a few percent, the machine's speed moved meanwhile.
        "model_only_before_mpix_s": _sig(mpix / (m.model_only_per_tile_before_s * m.tiles)),
        "model_only_after_mpix_s": _sig(mpix / (m.model_only_per_tile_after_s * m.tiles)),
        "efficiency": _sig(e2e_rate / model_rate),
        "first_batch_done_s": None if first_batch_s is None else round(first_batch_s, 2),
        "after_last_tile_s": None if tail_s is None else round(tail_s, 2),
        "steady_mpix_s": None if steady_rate is None else _sig(steady_rate),
        "steady_efficiency": None if steady_rate is None else _sig(steady_rate / model_rate),
        **memory_fields(m.memory),
        "other_cpu_share": round(m.memory.other_cpu_share, 3),
        "model_only_other_cpu_share": round(m.model_only_other_cpu, 3),
        "quiet_wait_s": round(m.quiet_wait_s, 1),
        **top_processes(m.memory),
        "km2_per_h": _sig(e2e_rate * 1e6 * PIXEL_SIZE**2 / 1e6 * 3600),
        "torch": torch.__version__,
        "threads": settings.cpus_per_worker,
        "cpu_count": os.cpu_count(),
        "load_before": round(m.load_before, 2),
        "load_after": round(m.load_after, 2),
        "python": platform.python_version(),
    }


def bench_predict(
    *,
    size: int,
    tile_size: int = 512,
    halo: int = 32,
    batch_size: int = 4,
    workers: int = 1,
    cpus_per_worker: int = 2,
    use_gpu: bool = False,
    arch: str = "unet",
    encoder: str = "resnet18",
    options: dict | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    model_only_batches: int = 16,
    address: str | None = None,
    log=print,
) -> dict:
    """Benchmark the predict stage on a synthetic ``size``² scene; log and return one JSON-able dict.

    Args:
        size: scene pixels a side (N); the scene has N² pixels at 0.5 m.
        tile_size: the job's ``tiling.tile_size``.
        halo: the job's ``tiling.halo``.
        batch_size: the job's ``predict.batch_size``.
        workers: the job's ``runtime.workers`` (model actors).
        cpus_per_worker: the job's ``runtime.cpus_per_worker`` (torch threads of each actor).
        use_gpu: the job's ``runtime.use_gpu``.
        arch: the model's architecture (random init; nothing downloaded).
        encoder: the model's encoder (random init; nothing downloaded).
        options: the model's extra options (``model.options``).
        workdir: folder for the cached scene and this run's checkpoint/mosaic
            (default: a temporary folder, removed unless ``keep``).
        keep: keep a scene this run had to write (for reuse by the next run).
        model_only_batches: batches timed for the model-only baseline; with
            more batches in the plan an evenly spread subset is timed and scaled.
        address: Ray address (default: embedded local Ray, or ``RAY_ADDRESS``).
        log: progress lines go here; the caller prints the returned dict (the CLI as one JSON line on stdout).

    Returns:
        The fields of the JSON line: rates in MPix/s per scene pixel, seconds,
        peak memory in MB (``memory_metric`` says PSS or RSS).
    """
    options = dict(options or {})
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels (got {size!r})")
    settings = _Settings(
        size=size,
        tile_size=tile_size,
        halo=halo,
        batch_size=batch_size,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        use_gpu=use_gpu,
        arch=arch,
        encoder=encoder,
        options=options,
        model_only_batches=model_only_batches,
        address=address,
    )
    return _run_in_workdir(workdir, settings, keep=keep, log=log)


def _run_in_workdir(workdir: Path | None, settings: _Settings, *, keep: bool, log: Callable[[str], None]) -> dict:
    """Run the benchmark in ``workdir`` (a temporary folder if None) and return its JSON line.

    The run's checkpoint and mosaic, and whatever ``keep`` does not keep, are removed even when the run fails.
    """
    temporary = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="geoseg-bench-")) if workdir is None else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / f"run-{os.getpid()}-{int(time.time())}"
    scene = scene_path(workdir, settings.size)
    created = False
    try:
        created = ensure_scene(scene, settings.size, log)
        checkpoint = random_checkpoint(run_dir / "checkpoint", settings.arch, settings.encoder, settings.options)
        job = _bench_job(run_dir, scene, checkpoint, settings)
        measured = _measure(job, scene, checkpoint, settings, log)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if created and not keep:
            scene.unlink(missing_ok=True)
        if temporary and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return _report(measured, settings)
