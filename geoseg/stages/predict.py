"""Predict stage: tile plan → a pool of Ray model actors → chunk-aligned Zarr mosaic."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from geoseg.config import Job
from geoseg.config.locations import is_uri
from geoseg.config.paths import JobPaths
from geoseg.errors import GeosegError, InputRasterError, JobConfigError, StageError
from geoseg.infer.blend import BlendScratch, drop_scratch
from geoseg.io.mosaic import UNREAD, UnreadTile, create_mosaic, done_chunks, geoseg_attrs, open_mosaic
from geoseg.io.overviews import build_overviews, list_overviews
from geoseg.io.raster import SceneInfo
from geoseg.io.unread import record_unread_tiles
from geoseg.models import is_instance_arch, output_stride, resolve_encoder
from geoseg.models.card import ModelCard
from geoseg.models.checkpoint import build_model_from_card, read_card, weights_sha256
from geoseg.models.context import KNOWN_HALOS, has_global_context
from geoseg.runtime import ActorPool, actors_for, blend_tiles, ray_session, start_predictors
from geoseg.stages.progress import tile_progress
from geoseg.stages.pyramid import mosaic_overviews
from geoseg.stages.resolution import resolution_note
from geoseg.stages.scene import predicted_scene
from geoseg.stages.sections import predict_spec, resolved_halo
from geoseg.stages.tiling_choice import chosen_tiling, measured_seams
from geoseg.tiling import Tile, check_tile_size, plan_tiles

__all__ = ["run_predict"]


def run_predict(
    job: Job, *, address: str | None = None, log: Callable[[str], None] = print, force: bool = False
) -> dict[str, Any]:
    """Predict the scene into ``mosaic.zarr``; skip a complete one, resume a half-written one.

    ``force`` redoes it all: a complete mosaic, a half-written one and (instance models) the tiles'
    detections are ignored and written again.
    """
    paths = JobPaths.of(job)
    job, checkpoint, card, scene = _checked_inputs(job, log)
    instance_model = is_instance_arch(card.arch)

    started = time.perf_counter()
    tiles = plan_tiles(scene.height, scene.width, tile_size=job.tiling.size, halo=resolved_halo(job))
    fingerprint = _fingerprint(scene, checkpoint, job)
    if instance_model:
        fingerprint["instances"] = job.instances.model_dump()
    if not force and _is_complete(paths.mosaic, fingerprint) and (not instance_model or paths.instance_table.exists()):
        return _nothing_to_do(paths.mosaic, len(tiles), log)
    if instance_model:
        from geoseg.stages.predict_instances import run_predict_instances

        return run_predict_instances(
            job,
            card=card,
            checkpoint=checkpoint,
            scene=scene,
            fingerprint=fingerprint,
            address=address,
            log=log,
            force=force,
        )
    return _predict_semantic(
        job, card, checkpoint, scene, tiles, fingerprint, started=started, address=address, log=log, force=force
    )


def _checked_inputs(job: Job, log: Callable[[str], None]) -> tuple[Job, Path, ModelCard, SceneInfo]:
    """The job with its tiling chosen, the checkpoint, its card and the scene, checked against each other.

    ``tiling: auto`` is chosen here, for this scene. Every check that can fail runs here, before the stage
    writes anything.
    """
    spec = predict_spec(job)
    if not job.tiling.auto:
        resolved_halo(job)  # before the checkpoint is read: a halo still 'auto' is reported first
    checkpoint = spec.checkpoint or JobPaths.of(job).checkpoint
    card = read_card(checkpoint)
    scene = predicted_scene(job, job.bands or list(card.bands), card=card)
    if len(scene.bands) != len(card.bands) or scene.dtype != card.dtype:
        raise InputRasterError(
            f"{scene.path}: predict.scene: {len(scene.bands)} band(s) of {scene.dtype}, but the model in {checkpoint} "
            f"expects {len(card.bands)} of {card.dtype}; "
            + scene.mismatch_fix(len(card.bands), card.dtype, "the model")
        )
    auto = job.tiling.auto
    job = chosen_tiling(job, card, checkpoint, (scene.height, scene.width), log)  # the card's cheapest here
    halo = resolved_halo(job)
    _check_tiling(job, card, halo)
    if not is_instance_arch(card.arch) and not auto:  # auto said what it chose by
        _note_seams(card, job, (scene.height, scene.width), log)
    note = resolution_note(str(scene.path), scene.transform, scene.crs, scene.height, scene.width, card)
    if note:
        log(note)
    return job, checkpoint, card, scene


def _check_tiling(job: Job, card: ModelCard, halo: int) -> None:
    """Raise when the tile size does not suit the model's output stride and the halo, or an instance model blends."""
    stride = output_stride(build_model_from_card(card))
    problem = check_tile_size(job.tiling.size, stride, card.arch, halo)
    if problem:
        raise InputRasterError(f"tiling.tile_size: {problem}")
    if is_instance_arch(card.arch) and job.tiling.stitch != "crop":
        raise JobConfigError(
            f"tiling.stitch: {card.arch} predicts instances, which are merged across tiles, "
            "not blended; remove `stitch: blend`"
        )
    if predict_spec(job).on_read_error == "skip" and job.tiling.stitch == "blend":
        raise JobConfigError(
            "predict.on_read_error: skip leaves a tile that cannot be read invalid, but `stitch: blend` would blend "
            "its neighbours without it; use `stitch: crop` with skip, or `on_read_error: stop`"
        )


def _nothing_to_do(mosaic: Path, tiles: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The result for a mosaic that is already complete (given overviews if an older run left it without)."""
    if not list_overviews(mosaic):
        build_overviews(mosaic)
    log(f"predict: {mosaic} is already complete for this scene, checkpoint and tiling; nothing to do")
    return {"tiles": 0, "skipped": tiles, "seconds": 0.0, "mosaic": str(mosaic)}


def _predict_semantic(
    job: Job,
    card: ModelCard,
    checkpoint: Path,
    scene: SceneInfo,
    tiles: list[Tile],
    fingerprint: dict,
    *,
    started: float,
    address: str | None,
    log: Callable[[str], None],
    force: bool,
) -> dict[str, Any]:
    """Write the class mosaic under ``mosaic.zarr.partial`` (resuming its done chunks), then give it the final name.

    ``started`` is the stage's clock: the rate it reports counts planning and fingerprinting too.
    """
    paths = JobPaths.of(job)
    partial = paths.mosaic.with_name(paths.mosaic.name + ".partial")
    runtime = job.runtime
    unread: list[UnreadTile] = []  # tiles left invalid because they could not be read (on_read_error: skip)
    # The model actors start first: their process, torch's import and the model's load take
    # seconds, which the mosaic's preparation below no longer adds to.
    with (
        ray_session(address or runtime.address, dashboard=runtime.dashboard),
        _start_predictors(job, checkpoint, scene, partial, len(tiles)) as pool,
    ):
        if not force:
            _reopen_to_retry_unread(paths.mosaic, partial, fingerprint, log)
        todo = _chunks_to_do(partial, fingerprint, scene, job, card, tiles, force, log)
        progress = tile_progress(len(tiles), len(tiles) - len(todo), log)
        batch_size = predict_spec(job).batch_size
        if job.tiling.stitch == "crop":
            written = pool.run(todo, batch_size=batch_size, progress=progress, on_unread=unread.append)
        else:
            written = _predict_blended(pool, tiles, todo, scene, partial, job, progress, log)
    record_unread_tiles(open_mosaic(partial, mode="r+"), unread)  # the run record lists them from here
    levels = _publish(partial, paths.mosaic, len(tiles), job, address)
    seconds = time.perf_counter() - started
    mpix = scene.width * scene.height / 1e6
    log(
        f"predict: {written} tiles, {mpix:.1f} MPix in {seconds:.0f} s ({mpix / seconds:.2f} MPix/s), "
        f"overviews {levels or 'none'}; wrote {paths.mosaic}"
    )
    return {
        "tiles": written,
        "skipped": len(tiles) - len(todo),
        "seconds": round(seconds, 1),
        "mpix_per_s": round(mpix / seconds, 3),
        "tile_size": job.tiling.size,  # as given, or as `tiling: auto` chose
        "halo": job.tiling.halo,
        "mosaic": str(paths.mosaic),
        "unread_tiles": [asdict(tile) for tile in unread],
    }


def _chunks_to_do(
    partial: Path,
    fingerprint: dict,
    scene: SceneInfo,
    job: Job,
    card: ModelCard,
    tiles: list[Tile],
    force: bool,
    log: Callable[[str], None],
) -> list[Tile]:
    """Make ``partial`` ready (new, or a matching half-written one) and return the tiles whose chunk is not written."""
    if force and partial.exists():
        log(f"predict: --force: discarding {partial.name} and its finished chunks")
        shutil.rmtree(partial)
    done = _resume_or_create(partial, fingerprint, scene, job, list(card.classes), log)
    todo = [tile for tile in tiles if (tile.row // job.tiling.core, tile.col // job.tiling.core) not in done]
    log(
        f"predict: {scene.path.name} {scene.width}x{scene.height} px in {len(tiles)} tiles "
        f"(tile {job.tiling.size}, halo {job.tiling.halo}, core {job.tiling.core})"
    )
    crf = predict_spec(job).crf
    if crf is not None:
        log(
            f"predict: a dense CRF refines each tile ({crf.iterations} iterations, {crf.window}-px window); it "
            f"reaches {crf.halo} px beyond the model's context, which the halo ({job.tiling.halo} px) must cover too"
        )
    if done:
        log(f"predict: resuming: skipped {len(tiles) - len(todo)} of {len(tiles)} chunks already written")
    return todo


def _start_predictors(job: Job, checkpoint: Path, scene: SceneInfo, partial: Path, tiles: int) -> ActorPool:
    """The job's model actors, at most one per batch of the plan; they open ``partial`` at their first batch."""
    runtime, spec = job.runtime, predict_spec(job)
    return start_predictors(
        checkpoint=checkpoint,
        scene=scene.path,
        mosaic=partial,
        workers=actors_for(runtime.workers, tiles, spec.batch_size),
        cpus_per_worker=runtime.cpus_per_worker,
        use_gpu=runtime.use_gpu,
        stitch=job.tiling.stitch,
        on_read_error=spec.on_read_error,
        crf=spec.crf.model_dump() if spec.crf else None,
    )


def _reopen_to_retry_unread(mosaic_path: Path, partial: Path, fingerprint: dict, log: Callable[[str], None]) -> None:
    """Rename a finished mosaic with chunks left unread back to ``partial``, so that only those are predicted again.

    ``geoseg run`` predicts again only when an input (the scene, repaired say), the job or the code changed.
    """
    if partial.exists() or not _is_complete(mosaic_path, fingerprint, unread_ok=True):
        return
    mosaic = open_mosaic(mosaic_path, mode="r+")
    unread = done_chunks(mosaic, UNREAD)
    if unread:
        log(f"predict: {mosaic_path.name}: reading the {len(unread)} tiles that could not be read before")
        # Stamped with the repaired files' identities: the partial resumes under this fingerprint.
        mosaic.group.attrs["geoseg"] = {**geoseg_attrs(mosaic.group), "fingerprint": fingerprint}
        os.replace(mosaic_path, partial)


def _publish(partial: Path, mosaic: Path, chunks: int, job: Job, address: str | None) -> list[int]:
    """Check every chunk of ``partial`` is written, add its overviews and rename it to ``mosaic``; the levels."""
    missing = chunks - len(done_chunks(open_mosaic(partial)))
    if missing:
        raise StageError(f"predict: {missing} chunks of {partial} were not written; rerun to resume")
    drop_scratch(open_mosaic(partial, mode="r+").group)
    levels = mosaic_overviews(partial, job, address)  # before the rename: only a complete mosaic has overviews
    if mosaic.exists():
        shutil.rmtree(mosaic)
    os.replace(partial, mosaic)  # only a complete mosaic carries the final name
    return levels


def _note_seams(card: ModelCard, job: Job, scene: tuple[int, int], log: Callable[[str], None]) -> None:
    """Say when crop-mode tiles only approximate whole-image prediction (cheap: known halos only)."""
    if job.tiling.stitch != "crop":
        return
    if has_global_context(card.arch, card.options):
        log(
            f"predict: note: {card.arch} pools over its whole input, so no halo makes tiles exact; "
            "`stitch: blend` smooths the seams"
        )
        return
    halo = resolved_halo(job)
    measured = measured_seams(card, job.tiling.size, halo, scene)
    if measured:
        log(measured)
        return
    encoder = resolve_encoder(card.arch, card.encoder)
    default = encoder == resolve_encoder(card.arch) and not card.options  # what KNOWN_HALOS was measured for
    known = KNOWN_HALOS.get(card.arch) if default else None
    if known and halo < known:
        log(
            f"predict: note: halo {halo} is below {card.arch}/{encoder}'s receptive-field radius "
            f"(halo {known}); tiles approximate whole-image prediction near core edges "
            "(`halo: auto` makes them exact, `stitch: blend` smooths the seams)"
        )


def _predict_blended(pool: ActorPool, tiles, todo, scene, partial, job: Job, progress, log) -> int:
    """Blend mode: every window's probabilities first (by ``pool``), then each chunk blended and written once."""
    mosaic = open_mosaic(partial, mode="r+")
    BlendScratch.create(mosaic, len(tiles), len(mosaic.class_names), job.tiling.size)
    have = BlendScratch(mosaic).finished()
    windows = [tile for tile in tiles if tile.index not in have]
    if have:
        log(f"predict: resuming: {len(have)} of {len(tiles)} tile windows already predicted")
    pool.run(windows, batch_size=predict_spec(job).batch_size)
    pool.close()  # its CPUs go to the blend pass
    log(f"predict: {len(windows)} windows predicted; blending {len(todo)} chunks")
    runtime = job.runtime
    return blend_tiles(
        todo,
        scene=scene.path,
        mosaic=partial,
        workers=max(1, runtime.workers * runtime.cpus_per_worker),
        progress=progress,
    )


def _fingerprint(scene, checkpoint, job: Job) -> dict:
    """What must match for a half-written mosaic to be resumed rather than redone."""
    spec = predict_spec(job)
    return {
        "scene": str(scene.path),
        **({"sources": list(scene.sources)} if scene.sources else {}),  # a survey: its files, in order
        "files": _file_identities(list(scene.sources) or [scene.path]),
        "size": [scene.height, scene.width],
        "transform": list(scene.transform)[:6],
        "bands": list(scene.bands),
        "checkpoint_sha256": weights_sha256(checkpoint),
        "tile_size": job.tiling.size,
        "halo": job.tiling.halo,
        "stitch": job.tiling.stitch,
        "scores": spec.scores,
        "zarr_format": spec.zarr_format,
        **({"crf": spec.crf.model_dump()} if spec.crf else {}),  # absent: mosaics made before it match
    }


def _file_identities(paths: list) -> list:
    """Size and modification time of each local file read: a scene replaced under the same name is redone.

    (An object in storage, or a file this machine cannot see, is named by its path alone.)
    """
    identities = []
    for path in paths:
        try:
            stat = os.stat(path) if not is_uri(path) else None
        except OSError:
            stat = None
        identities.append([str(path), stat.st_size, stat.st_mtime_ns] if stat else [str(path)])
    return identities


def _is_complete(mosaic_path, fingerprint: dict, *, unread_ok: bool = False) -> bool:
    """Whether ``mosaic_path`` has every chunk of this fingerprint written (``unread_ok``: some left unread)."""
    if not mosaic_path.exists():
        return False
    try:
        mosaic = open_mosaic(mosaic_path)
    except GeosegError:
        return False
    rows, cols = mosaic.grid
    # With tiles left unread, the scene's files are expected to have changed: repaired, they are read again.
    same = (
        _without_files(mosaic.fingerprint) == _without_files(fingerprint)
        if unread_ok
        else mosaic.fingerprint == fingerprint
    )
    complete = same and len(done_chunks(mosaic)) == rows * cols
    return complete and (unread_ok or not done_chunks(mosaic, UNREAD))


def _without_files(fingerprint: dict) -> dict:
    return {key: value for key, value in fingerprint.items() if key != "files"}


def _resume_or_create(partial, fingerprint: dict, scene, job: Job, classes, log) -> set[tuple[int, int]]:
    """Open a matching half-written mosaic and return its done chunks, or start a new one."""
    if partial.exists():
        try:
            mosaic = open_mosaic(partial, mode="r+")
            if mosaic.fingerprint == fingerprint:
                return done_chunks(mosaic) - done_chunks(mosaic, UNREAD)  # those left unread are tried again
        except GeosegError:
            pass
        log(f"predict: discarding {partial.name}: it was started with another scene, checkpoint or tiling")
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    spec = predict_spec(job)
    create_mosaic(
        partial,
        height=scene.height,
        width=scene.width,
        chunk=job.tiling.core,
        crs=scene.crs,
        transform=scene.transform,
        class_names=classes,
        fingerprint=fingerprint,
        scores=spec.scores,
        zarr_format=spec.zarr_format,
    )
    return set()
