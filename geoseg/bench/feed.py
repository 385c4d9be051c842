"""``geoseg bench predict --model null``: the prediction pipeline with a model that does no work.

The same scene, tiling and model actors as ``bench predict``, with a checkpoint of
:class:`~geoseg.models.null.NullModel` (zero logits): what is timed is everything around the
model (each actor reading its windows, the device's pixel math and argmax, the Zarr writes, Ray's
calls and the driver's loop), so its rate is the most MPix/s this pipeline can feed a model.

It runs with 1 actor of 1 CPU and with one such actor per core, after one warm-up pass (the
actors' start-up is ``bench predict``'s ``first_batch_done_s``, not the feed's), and reads the
same windows with ``bench decode``'s reader in between, so each figure comes with the input's
floor measured on the same machine minutes apart: ``vs_decode`` is the pipeline's share of the
pure read rate with as many threads. Cores per GPU = a model's MPix/s ÷ ``mpix_s_per_core``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import rasterio

from geoseg.bench.decode import REPEATS, read_every_tile
from geoseg.bench.measure import MemorySampler, wait_until_quiet
from geoseg.io.mosaic import create_mosaic
from geoseg.synthetic.blocks import CLASSES, scene_card, scene_path
from geoseg.tiling import Tile, plan_tiles

__all__ = ["bench_feed"]


def null_checkpoint(folder: Path) -> Path:
    """A checkpoint of the model that does no work, for this benchmark's scene."""
    from geoseg.models.checkpoint import save_checkpoint
    from geoseg.models.null import NULL_ARCH, NullModel

    return save_checkpoint(folder, NullModel(len(CLASSES)), scene_card(NULL_ARCH, "none", {}))


def _fresh_mosaic(path: Path, scene: Path, size: int, core: int) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    with rasterio.open(scene) as src:
        create_mosaic(
            path,
            height=size,
            width=size,
            chunk=core,
            crs=src.crs,
            transform=src.transform,
            class_names=list(CLASSES),
            fingerprint={},
        )
    return path


def _pipeline_seconds(tiles: list[Tile], checkpoint: Path, scene: Path, mosaic: Path, actors: int, batch: int) -> float:
    """Seconds for ``actors`` null-model actors of one CPU each to predict every tile, after a warm-up pass."""
    from geoseg.runtime import start_predictors

    with start_predictors(
        checkpoint=checkpoint, scene=scene, mosaic=mosaic, workers=actors, cpus_per_worker=1, use_gpu=False
    ) as pool:
        pool.run(tiles[: actors * batch * 2], batch_size=batch)  # every actor started, its first batches done
        started = time.perf_counter()
        pool.run(tiles, batch_size=batch)  # rewrites the warm-up's chunks with the same bytes
        return time.perf_counter() - started


def bench_feed(
    *,
    size: int,
    tile_size: int = 512,
    halo: int = 32,
    batch_size: int = 4,
    workdir: Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Time the null-model pipeline and the plain reader with 1 and with every core; one JSON-able dict."""
    from geoseg.bench.predict import ensure_scene
    from geoseg.runtime import ray_session

    cores = os.cpu_count() or 1
    temporary = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="geoseg-bench-feed-")) if workdir is None else Path(workdir)
    run = folder / f"feed-{os.getpid()}-{int(time.time())}"
    try:
        scene = scene_path(folder, size)
        ensure_scene(scene, size, log)
        tiles = plan_tiles(size, size, tile_size=tile_size, halo=halo)
        checkpoint = null_checkpoint(run / "checkpoint")
        mosaic = run / "mosaic.zarr"
        read_every_tile(scene, tiles, (1, 2, 3), 1)  # the file into the page cache
        mpix = size * size / 1e6
        runs = []
        with ray_session(None):
            for count in sorted({1, cores}):
                wait_until_quiet(psutil.Process())
                with MemorySampler(interval=0.5) as memory:
                    _fresh_mosaic(mosaic, scene, size, tile_size - 2 * halo)
                    seconds = _pipeline_seconds(tiles, checkpoint, scene, mosaic, count, batch_size)
                decode = statistics.median(read_every_tile(scene, tiles, (1, 2, 3), count) for _ in range(REPEATS))
                runs.append(
                    {
                        "cores": count,
                        "mpix_s": round(mpix / seconds, 3),
                        "mpix_s_per_core": round(mpix / seconds / count, 3),
                        "decode_mpix_s": round(mpix / decode, 3),
                        "vs_decode": round(decode / seconds, 3),
                        "other_cpu_share": round(memory.other_cpu_share, 3),
                    }
                )
                log(f"bench feed: {count} core(s): {mpix / seconds:.1f} MPix/s, decode {mpix / decode:.1f}")
    finally:
        shutil.rmtree(run, ignore_errors=True)
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "bench": "predict",
        "model": "null",
        "size": size,
        "tile": tile_size,
        "halo": halo,
        "batch_size": batch_size,
        "tiles": len(tiles),
        "cpu_count": cores,
        "runs": runs,
        "scaling": round(runs[-1]["mpix_s"] / runs[0]["mpix_s"], 3),
        "other_cpu_share": max(run["other_cpu_share"] for run in runs),
    }
