"""Predict stage for instance models: tiles → Mask R-CNN actors → merge across tiles → instance mosaic.

1. Every tile (core + halo, the usual tile plan) goes through a pool of Ray
   actors running :class:`~geoseg.infer.detect.TileDetector`; each tile's
   raw detections land in ``detections/tile_NNNNNN.npz``. A rerun skips the
   tiles whose file exists (the folder is kept only while the scene,
   checkpoint, tiling and thresholds match).
2. The driver reads those files and merges duplicates on mask overlap
   (:func:`~geoseg.infer.merge.merge_detections`), then gives every pixel
   to one instance (:func:`~geoseg.infer.merge.resolve_overlaps`).
3. The mosaic is written chunk by chunk (one writer per chunk): ``labels``
   holds each instance's class, ``instances`` its id, ``valid`` the scene's
   data mask; ``instances.parquet`` lists every id. Both are written under
   temporary names and renamed when complete.

With ``predict.on_read_error: skip`` a tile that cannot be read gets no file:
its core is left invalid (``valid``, ``labels`` and ``instances`` 0, as outside
the data; the chunk marked unread) and cut out of its neighbours' instances,
and the next run (after the file is repaired) detects only those tiles again.

The driver holds the detections (bit-packed on disk, a bounding-box crop
each in memory): memory grows with the number of objects, not the scene's
pixels.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.config.schema import InstanceSpec
from geoseg.errors import StageError
from geoseg.infer.detect import tile_file
from geoseg.infer.merge import merge_detections, resolve_overlaps, tile_windows
from geoseg.io.instances import create_instance_array, table_from_columns, write_instance_table
from geoseg.io.masks import InstanceMask, load_masks, tight
from geoseg.io.mosaic import (
    MosaicInfo,
    UnreadTile,
    create_mosaic,
    leave_invalid,
    mark_done,
    record_unread_tiles,
    write_block,
)
from geoseg.io.raster import SceneInfo, read_valid
from geoseg.models.card import ModelCard
from geoseg.runtime import detect_tiles, ray_session
from geoseg.stages.progress import tile_progress
from geoseg.stages.pyramid import mosaic_overviews
from geoseg.stages.sections import predict_spec, resolved_halo
from geoseg.tiling import Tile, plan_tiles
from geoseg.vectorize.metres import pixel_areas_m2

__all__ = ["run_predict_instances", "write_instance_mosaic"]

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


def write_instance_mosaic(
    instances: list[InstanceMask], mosaic: MosaicInfo, scene_path, unread: Collection[UnreadTile] = ()
) -> None:
    """Paint non-overlapping instances (id = position + 1) into ``labels``/``instances``, chunk by chunk.

    The cores of ``unread`` tiles (one chunk each) are left invalid without reading the scene there.
    """
    ids_array = create_instance_array(mosaic)
    bounds = np.array([i.bbox for i in instances], dtype=np.float64).reshape(-1, 4)
    tree = shapely.STRtree(shapely.box(bounds[:, 1], bounds[:, 0], bounds[:, 3] - 1e-6, bounds[:, 2] - 1e-6))
    unread_cores = {(tile.row, tile.col) for tile in unread}
    with rasterio.open(scene_path) as src:
        for row, col, h, w in mosaic.chunk_windows():
            if (row, col) in unread_cores:
                leave_invalid(mosaic, row, col, h, w)
                continue
            ids = np.zeros((h, w), np.uint32)
            labels = np.zeros((h, w), np.uint8)
            for k in tree.query(shapely.box(col, row, col + w - 1e-6, row + h - 1e-6)).tolist():
                instance = instances[k]
                part = instance.crop((row, col, row + h, col + w))
                top, left = max(instance.row, row) - row, max(instance.col, col) - col
                target = (slice(top, top + part.shape[0]), slice(left, left + part.shape[1]))
                ids[target][part] = k + 1
                labels[target][part] = instance.class_id
            valid = read_valid(src, Window(col, row, w, h))
            ids[~valid], labels[~valid] = 0, 0
            write_block(mosaic, row, col, labels, valid.astype(np.uint8))
            ids_array[row : row + h, col : col + w] = ids
            mark_done(mosaic, row, col)


def _table(instances: list[InstanceMask], mosaic: MosaicInfo):
    # The ground area of a pixel at each instance's centre: in Web Mercator or degrees it varies with latitude.
    boxes = np.asarray([i.bbox for i in instances], dtype=np.float64).reshape(-1, 4)
    centre_rows, centre_cols = (boxes[:, 0] + boxes[:, 2]) / 2 - 0.5, (boxes[:, 1] + boxes[:, 3]) / 2 - 0.5
    pixel_m2 = pixel_areas_m2(mosaic.transform, mosaic.crs, centre_rows, centre_cols)
    return table_from_columns(
        ids=np.arange(1, len(instances) + 1),
        class_ids=[i.class_id for i in instances],
        class_names=mosaic.class_names,
        scores=[i.score for i in instances],
        bboxes=[i.bbox for i in instances],
        areas_px=[i.area for i in instances],
        pixel_area_m2=pixel_m2,
    )


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
    tiles = plan_tiles(scene.height, scene.width, tile_size=job.tiling.tile_size, halo=resolved_halo(job))
    todo, unread = _detect(job, paths, tiles, checkpoint, scene, fingerprint, address=address, log=log, force=force)
    detections, merged, instances = _merge_tiles(paths, tiles, scene, job.instances, unread)
    levels = _write_outputs(paths, instances, card, scene, job, fingerprint, unread)
    seconds = time.perf_counter() - started
    cut = sum(d.cut for d in detections)
    log(
        f"predict: {len(detections)} raw detections ({cut} cut by a tile edge) → {len(merged)} after the "
        f"cross-tile merge → {len(instances)} instances; {len(todo)} tiles in {seconds:.0f} s, overviews "
        f"{levels or 'none'}; wrote {paths.mosaic}, {paths.instance_table}"
    )
    return {
        "tiles": len(todo),
        "skipped": len(tiles) - len(todo),
        "seconds": round(seconds, 1),
        "raw_detections": len(detections),
        "cut_detections": cut,
        "merged": len(merged),
        "instances": len(instances),
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
        f"{job.tiling.tile_size}, halo {job.tiling.halo}: neighbours overlap by {2 * job.tiling.halo} px)"
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


def _merge_tiles(
    paths: JobPaths, tiles: list[Tile], scene: SceneInfo, settings: InstanceSpec, unread: list[UnreadTile]
) -> tuple[list[InstanceMask], list[InstanceMask], list[InstanceMask]]:
    """Every tile's raw detections, those merged across tiles, and the final non-overlapping instances.

    Tiles that could not be read have no detections, and no say in the merge (their windows are left out).
    """
    skipped = {tile.tile for tile in unread}
    read = [tile for tile in tiles if tile.index not in skipped]
    missing = [tile.index for tile in read if not tile_file(paths.tile_detections, tile.index).exists()]
    if missing:
        raise StageError(
            f"predict: {len(missing)} tiles have no detections file in {paths.tile_detections}; rerun to resume"
        )
    detections = [d for tile in read for d in load_masks(tile_file(paths.tile_detections, tile.index))]
    merged = merge_detections(
        detections,
        iou=settings.merge_iou,
        ios=settings.merge_ios,
        windows=tile_windows(read, scene.height, scene.width),
        scene_shape=(scene.height, scene.width),
    )
    instances = resolve_overlaps(_cut_out(merged, unread), min_area=settings.min_area_px)
    return detections, merged, instances


def _cut_out(instances: list[InstanceMask], unread: list[UnreadTile]) -> list[InstanceMask]:
    """The instances less their pixels in the cores of unread tiles (seen in a neighbour's halo; left invalid)."""
    if not unread:
        return instances
    kept = []
    for instance in instances:
        mask = instance.mask.copy()
        r0, c0, r1, c1 = instance.bbox
        for tile in unread:
            top, left = max(r0, tile.row), max(c0, tile.col)
            bottom, right = min(r1, tile.row + tile.height), min(c1, tile.col + tile.width)
            if bottom > top and right > left:
                mask[top - r0 : bottom - r0, left - c0 : right - c0] = False
        remaining = tight(replace(instance, mask=mask))
        if remaining is not None:
            kept.append(remaining)
    return kept


def _write_outputs(
    paths: JobPaths,
    instances: list[InstanceMask],
    card: ModelCard,
    scene: SceneInfo,
    job: Job,
    fingerprint: dict,
    unread: list[UnreadTile],
) -> list[int]:
    """Write the mosaic under a temporary name, rename it, then write the table beside it; the overview levels."""
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
    write_instance_mosaic(instances, mosaic, scene.path, unread)
    record_unread_tiles(mosaic, unread)  # the run record lists them from here
    table = _table(instances, mosaic)
    levels = mosaic_overviews(partial, job, None)
    if paths.mosaic.exists():
        shutil.rmtree(paths.mosaic)
    os.replace(partial, paths.mosaic)
    # After the mosaic: a rerun finds a complete mosaic only with its table beside it.
    write_instance_table(table, paths.instance_table)
    return levels
