"""Predict stage: tile plan → Ray Data model actors → chunk-aligned Zarr mosaic."""

from __future__ import annotations

import os
import shutil
import time

from geoseg.config import Job
from geoseg.errors import InputRasterError
from geoseg.io.mosaic import create_mosaic
from geoseg.io.raster import inspect_scene
from geoseg.models import output_stride
from geoseg.runtime import predict_tiles, ray_session
from geoseg.stages.paths import JobPaths
from geoseg.tiling import check_tile_size, plan_tiles
from geoseg.train.checkpoint import build_model_from_card, read_card

__all__ = ["run_predict"]


def run_predict(job: Job, *, address: str | None = None, log=print) -> dict:
    paths = JobPaths.of(job)
    spec = job.predict
    checkpoint = spec.checkpoint or paths.checkpoint
    card = read_card(checkpoint)
    scene = inspect_scene(spec.scene, field="predict.scene", bands=job.bands or card["bands"])
    if len(scene.bands) != len(card["bands"]) or scene.dtype != card["dtype"]:
        raise InputRasterError(
            f"{scene.path}: predict.scene: {len(scene.bands)} band(s) of {scene.dtype}, but the model in {checkpoint} "
            f"expects {len(card['bands'])} of {card['dtype']}; predict imagery like the training scenes")
    stride = output_stride(build_model_from_card(card))
    problem = check_tile_size(job.tiling.tile_size, stride, card["arch"])
    if problem:
        raise InputRasterError(f"tiling.tile_size: {problem}")

    started = time.perf_counter()
    tiles = plan_tiles(scene.height, scene.width, tile_size=job.tiling.tile_size, halo=job.tiling.halo)
    partial = paths.mosaic.with_name(paths.mosaic.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    create_mosaic(partial, height=scene.height, width=scene.width, chunk=job.tiling.core, crs=scene.crs,
                  transform=scene.transform, class_names=card["classes"])
    log(f"predict: {scene.path.name} {scene.width}x{scene.height} px in {len(tiles)} tiles "
        f"(tile {job.tiling.tile_size}, halo {job.tiling.halo}, core {job.tiling.core})")

    done = 0
    step = max(1, len(tiles) // 10)

    def progress(count: int) -> None:
        nonlocal done
        before, done = done, done + count
        if done // step != before // step or done == len(tiles):
            rate = done * job.tiling.core ** 2 / 1e6 / (time.perf_counter() - started)
            log(f"predict: tiles {done}/{len(tiles)} ({rate:.2f} MPix/s)")

    with ray_session(address or job.runtime.address):
        written = predict_tiles(tiles, checkpoint=checkpoint, scene=scene.path, mosaic=partial,
                                batch_size=spec.batch_size, workers=job.runtime.workers,
                                cpus_per_worker=job.runtime.cpus_per_worker, use_gpu=job.runtime.use_gpu,
                                progress=progress)
    if paths.mosaic.exists():
        shutil.rmtree(paths.mosaic)
    os.replace(partial, paths.mosaic)  # only a complete mosaic carries the final name
    seconds = time.perf_counter() - started
    mpix = scene.width * scene.height / 1e6
    log(f"predict: {written} tiles, {mpix:.1f} MPix in {seconds:.0f} s ({mpix / seconds:.2f} MPix/s); wrote {paths.mosaic}")
    return {"tiles": written, "seconds": round(seconds, 1), "mpix_per_s": round(mpix / seconds, 3),
            "mosaic": str(paths.mosaic)}
