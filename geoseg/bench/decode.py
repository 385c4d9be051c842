"""``geoseg bench decode``: the input side's floor, rasterio reading what prediction reads and nothing else.

Every tile window of the job's tiling is read from the same synthetic scene ``bench predict``
uses (:func:`geoseg.io.raster.read_tile`: the window with its halo mirrored at the scene's
edges, and the core's validity mask), by a pool of reader threads, each with its own GDAL
dataset handle (handles are not thread-safe; GDAL releases the GIL while it decodes). No model,
no normalisation, no writes: no prediction pipeline on this machine can be fed faster than this.

It is measured with one thread and with one thread per core, as scene MPix/s (N² / seconds, the
unit of ``bench predict``) in total and per core. The ratio of a model's MPix/s to the feed's
MPix/s per core is the number of cores one model (one GPU) needs to be kept busy.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import rasterio

from geoseg.bench.measure import MemorySampler, wait_until_quiet
from geoseg.io.raster import ThreadLocalRaster, read_tile
from geoseg.synthetic.blocks import scene_path
from geoseg.tiling import Tile, plan_tiles

__all__ = ["bench_decode", "read_every_tile"]

GDAL_CACHE_MB = 64  # as a prediction worker (geoseg.infer.predict)
REPEATS = 3


def read_every_tile(scene: Path, tiles: list[Tile], bands: tuple[int, ...], threads: int) -> float:
    """Seconds to read every tile's window and validity with ``threads`` reader threads."""
    handles = ThreadLocalRaster(scene)

    def read(tile: Tile) -> int:
        pixels, _ = read_tile(handles.get(), tile, bands)
        return pixels.shape[-1]

    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            for _ in pool.map(read, tiles):
                pass
            return time.perf_counter() - started
    finally:
        handles.close()


def bench_decode(
    *,
    size: int,
    tile_size: int = 512,
    halo: int = 32,
    threads: list[int] | None = None,
    workdir: Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Time :func:`read_every_tile` for each thread count (default: 1 and every core); one JSON-able dict.

    The scene is ``bench predict``'s (``bench_scene_<N>_v1.tif`` in ``workdir``, reused when there,
    else written and kept there; in a temporary folder, removed, without ``workdir``).
    """
    from geoseg.bench.predict import ensure_scene

    if size < 1 or tile_size <= 2 * halo:
        raise ValueError(f"size must be positive and tile_size above twice the halo (got {size}, {tile_size}, {halo})")
    cores = os.cpu_count() or 1
    counts = sorted(set(threads or [1, cores]))
    temporary = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="geoseg-bench-decode-")) if workdir is None else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        scene = scene_path(folder, size)
        ensure_scene(scene, size, log)
        tiles = plan_tiles(size, size, tile_size=tile_size, halo=halo)
        with rasterio.open(scene) as src:
            bands = tuple(range(1, src.count + 1))
        read_every_tile(scene, tiles, bands, 1)  # the file into the page cache, as for every timed pass
        runs = []
        for count in counts:
            wait_until_quiet(psutil.Process())
            with MemorySampler(interval=0.5) as memory:
                # The median of a few passes: one pass over a small scene takes about a second.
                seconds = statistics.median(read_every_tile(scene, tiles, bands, count) for _ in range(REPEATS))
            mpix_s = size * size / 1e6 / seconds
            runs.append(
                {
                    "threads": count,
                    "seconds": float(f"{seconds:.4g}"),
                    "mpix_s": round(mpix_s, 3),
                    "mpix_s_per_core": round(mpix_s / min(count, cores), 3),
                    "other_cpu_share": round(memory.other_cpu_share, 3),
                }
            )
            log(f"bench decode: {count} thread(s): {mpix_s:.1f} MPix/s")
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    one, most = runs[0], runs[-1]
    return {
        "bench": "decode",
        "size": size,
        "tile": tile_size,
        "halo": halo,
        "tiles": len(tiles),
        "cpu_count": cores,
        "runs": runs,
        "scaling": round(most["mpix_s"] / one["mpix_s"], 3),
        "other_cpu_share": max(run["other_cpu_share"] for run in runs),
    }
