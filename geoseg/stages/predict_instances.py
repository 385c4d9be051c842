"""Predict stage for instance models: tiles → Mask R-CNN actors → merge across tiles → instance mosaic.

1. Every tile (core + halo, the usual tile plan) goes through a pool of Ray
   actors running :class:`~geoseg.infer.detect.TileDetector`; each tile's
   raw detections land in ``detections/tile_NNNNNN.npz``. A rerun skips the
   tiles whose file exists (the folder is kept only while the scene,
   checkpoint, tiling and thresholds match).
2. Bands of tile rows are merged as tasks (Ray tasks when ``runtime.workers``
   > 1): duplicates matched on mask overlap (:func:`~geoseg.infer.merge.merge_detections`),
   then every pixel given to one instance (:func:`~geoseg.infer.merge.resolve_overlaps`),
   for each group of detections that no other band can reach; the driver merges
   only the detections near band seams (:mod:`geoseg.infer.merge_bands`): the
   same instances as merging the scene at once.
3. The driver numbers the instances 1..N by first pixel as they become final and
   writes ``instances.parquet``; band tasks then write the mosaic's chunks
   (:mod:`geoseg.stages.instance_mosaic`; one writer per chunk): ``labels``
   holds each instance's class, ``instances`` its id, ``valid`` the scene's
   data mask. Both are written under temporary names and renamed when complete.

With ``predict.on_read_error: skip`` a tile that cannot be read gets no file:
its core is left invalid (``valid``, ``labels`` and ``instances`` 0, as outside
the data; the chunk marked unread) and cut out of its neighbours' instances,
and the next run (after the file is repaired) detects only those tiles again.

The driver holds the detections near a band seam (a bounding-box crop each) and the
metadata of instances not numbered yet, not the scene's. A killed merge resumes at the
bands whose parts it had not written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.io.instances import InstanceTableWriter
from geoseg.io.mosaic import UnreadTile, create_mosaic
from geoseg.io.raster import SceneInfo
from geoseg.io.unread import record_unread_tiles
from geoseg.models.card import ModelCard
from geoseg.runtime import detect_tiles, iter_tasks, ray_session
from geoseg.stages.instance_mosaic import MergeCounts, write_instance_rows
from geoseg.stages.progress import tile_progress
from geoseg.stages.pyramid import mosaic_overviews
from geoseg.stages.sections import predict_spec, resolved_halo
from geoseg.tiling import Tile, plan_tiles
from geoseg.vectorize.classes import RunTasks, in_process

__all__ = ["run_predict_instances"]

FINGERPRINT = "fingerprint.json"


def _detections_folder(paths: JobPaths, fingerprint: dict, log: Callable[[str], None], force: bool = False) -> set[int]:
    """The tiles already detected under this fingerprint (a stale folder, or any with ``force``, is emptied first)."""
    folder = paths.tile_detections
    stamp = folder / FINGERPRINT
    if force and folder.exists():
        log(f"predict: --force: discarding {folder.name}/ and its tiles' detections")
        shutil.rmtree(folder)
    if folder.exists():
        try:
            same = json.loads(stamp.read_text()) == fingerprint
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            log(f"predict: discarding {folder.name}/: it was made with another scene, checkpoint, tiling or thresholds")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(fingerprint, indent=1))
    return {int(p.stem.split("_")[1]) for p in folder.glob("tile_*.npz")}


def run_predict_instances(
    job: Job,
    *,
    card: ModelCard,
    checkpoint,
    scene,
    fingerprint: dict,
    address,
    log: Callable[[str], None],
    force: bool = False,
) -> dict[str, Any]:
    """Detect, merge and write the instance mosaic and table (see the module doc)."""
    paths = JobPaths.of(job)
    started = time.perf_counter()
    tiles = plan_tiles(scene.height, scene.width, tile_size=job.tiling.size, halo=resolved_halo(job))
    todo, unread = _detect(job, paths, tiles, checkpoint, scene, fingerprint, address=address, log=log, force=force)
    counts, levels = _write_outputs(paths, tiles, card, scene, job, fingerprint, unread, address)
    seconds = time.perf_counter() - started
    log(
        f"predict: {counts.detections} raw detections ({counts.cut} cut by a tile edge) → {counts.merged} after "
        f"the cross-tile merge → {counts.instances} instances; {len(todo)} tiles in {seconds:.0f} s, overviews "
        f"{levels or 'none'}; wrote {paths.mosaic}, {paths.instance_table}"
    )
    return {
        "tiles": len(todo),
        "skipped": len(tiles) - len(todo),
        "seconds": round(seconds, 1),
        "raw_detections": counts.detections,
        "cut_detections": counts.cut,
        "merged": counts.merged,
        "instances": counts.instances,
        "mosaic": str(paths.mosaic),
        "table": str(paths.instance_table),
        "unread_tiles": [asdict(tile) for tile in unread],
    }


def _detect(
    job: Job,
    paths: JobPaths,
    tiles: list[Tile],
    checkpoint: Path,
    scene: SceneInfo,
    fingerprint: dict,
    *,
    address: str | None,
    log: Callable[[str], None],
    force: bool,
) -> tuple[list[Tile], list[UnreadTile]]:
    """Run the tiles not yet detected under this fingerprint through the actor pool; those tiles, and the unread."""
    have = _detections_folder(paths, fingerprint, log, force)
    todo = [tile for tile in tiles if tile.index not in have]
    log(
        f"predict: {scene.path.name} {scene.width}x{scene.height} px in {len(tiles)} tiles (tile "
        f"{job.tiling.size}, halo {job.tiling.halo}: neighbours overlap by {2 * job.tiling.halo} px)"
        + (f"; resuming: {len(have)} tiles already detected" if have else "")
    )
    progress = tile_progress(len(tiles), len(tiles) - len(todo), log)

    runtime, settings = job.runtime, job.instances
    thresholds = {
        "score_threshold": settings.score_threshold,
        "mask_threshold": settings.mask_threshold,
        "min_area": settings.min_area_px,
    }
    unread: list[UnreadTile] = []
    with ray_session(address or runtime.address, dashboard=runtime.dashboard):
        detect_tiles(
            todo,
            checkpoint=checkpoint,
            scene=scene.path,
            out_dir=paths.tile_detections,
            batch_size=predict_spec(job).batch_size,
            workers=runtime.workers,
            cpus_per_worker=runtime.cpus_per_worker,
            use_gpu=runtime.use_gpu,
            thresholds=thresholds,
            progress=progress,
            on_read_error=predict_spec(job).on_read_error,
            on_unread=unread.append,
        )
    return todo, unread


def _write_outputs(
    paths: JobPaths,
    tiles: list[Tile],
    card: ModelCard,
    scene: SceneInfo,
    job: Job,
    fingerprint: dict,
    unread: list[UnreadTile],
    address: str | None,
) -> tuple[MergeCounts, list[int]]:
    """Merge and write the mosaic under a temporary name, rename it, then the table beside it; counts, levels."""
    partial = paths.mosaic.with_name(paths.mosaic.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    mosaic = create_mosaic(
        partial,
        height=scene.height,
        width=scene.width,
        chunk=job.tiling.core,
        crs=scene.crs,
        transform=scene.transform,
        class_names=list(card.classes),
        fingerprint=fingerprint,
        zarr_format=predict_spec(job).zarr_format,
    )
    # The table's rows are written as the instances are numbered, and it is renamed into place after
    # the mosaic: a rerun finds a complete mosaic only with its table beside it.
    # One Ray for the merge's band tasks and the overviews' (which reuse a running one).
    runtime = job.runtime
    parallel = ray_session(address or runtime.address, dashboard=runtime.dashboard) if runtime.workers > 1 else None
    with InstanceTableWriter(paths.instance_table) as table, parallel or nullcontext():
        counts = write_instance_rows(
            paths, tiles, scene, job.instances, unread, mosaic, table, run_tasks=_band_tasks(job)
        )
        record_unread_tiles(mosaic, unread)  # the run record lists them from here
        levels = mosaic_overviews(partial, job, address)
        if paths.mosaic.exists():
            shutil.rmtree(paths.mosaic)
        os.replace(partial, paths.mosaic)
    return counts, levels


def _band_tasks(job: Job) -> RunTasks:
    """How the merge's band tasks run: Ray tasks on the job's workers (inside a session), or here for one worker."""
    runtime = job.runtime
    if runtime.workers <= 1:
        return in_process
    return lambda function, arguments: iter_tasks(function, arguments, cpus=runtime.cpus_per_worker)
