"""Train stage: rasterize labels, hold out validation strips, compute band statistics, fit through Ray Train."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from geoseg._version import __version__
from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.errors import GeosegError
from geoseg.io.labels import label_options, load_labels, rasterize_labels
from geoseg.io.normalization import band_statistics
from geoseg.io.raster import SceneInfo
from geoseg.models import is_instance_arch, output_stride, resolve_encoder
from geoseg.models.card import ModelCard, Normalization
from geoseg.models.checkpoint import build_model_from_card, read_card, save_weights
from geoseg.runtime import fit_model, ray_session
from geoseg.stages.scene import training_image
from geoseg.stages.sections import resolved_halo, train_spec
from geoseg.stages.tiling_choice import record_seams
from geoseg.train.history import plot_history
from geoseg.train.instances import instance_centres
from geoseg.train.plan import TrainingPlan, TrainingScene, box_of
from geoseg.train.sampler import LabelIndex, split_area

__all__ = ["run_train", "training_plan"]

_CLASS_WEIGHTED = {"weighted_ce", "border_ce"}
INITIAL_WEIGHTS = "initial_weights.safetensors"  # in train/: the whole model with its pretrained encoder


def run_train(
    job: Job, *, address: str | None = None, log: Callable[[str], None] = print, force: bool = False
) -> dict[str, Any]:
    """Train the job's model into ``checkpoint/``; skip it when the checkpoint already holds this job's model.

    ``force`` trains again from the start: the "already trained" shortcut is skipped and Ray Train's
    folder for this run is dropped, so nothing resumes from its checkpoints.
    """
    paths = JobPaths.of(job)
    started = time.perf_counter()
    plan = training_plan(job, log)
    run = f"{job.name}-{plan.digest()}"  # Ray Train's run: the same job and data resume it, a changed job starts anew
    plan = plan.with_card(plan.card.model_copy(update={"run": run}))  # a rerun finds its checkpoint by this
    if force:
        shutil.rmtree(paths.ray_storage / run, ignore_errors=True)  # else Ray Train resumes its last checkpoint
    elif _already_trained(paths, run):
        log(f"train: {paths.checkpoint} already holds this job's model (run {run}); nothing to do")
        if read_card(paths.checkpoint).seams is None:  # trained by a geoseg that did not measure them
            record_seams(job, plan, paths.checkpoint, log)
        return {"seconds": 0.0, "checkpoint": str(paths.checkpoint), "skipped": True}
    log(_describe(job))
    # Ray Train V2 watches its controller through the dashboard's state API (without it, it logs a
    # warning every second), so training always starts the dashboard of an embedded Ray.
    with ray_session(address or job.runtime.address, dashboard=True):
        metrics = fit_model(
            plan,
            name=run,
            storage=paths.ray_storage,
            checkpoint_out=paths.checkpoint,
            workers=job.runtime.workers,
            cpus_per_worker=job.runtime.cpus_per_worker,
            use_gpu=job.runtime.use_gpu,
            max_failures=train_spec(job).max_failures,
        )
    history = metrics.pop("history", [])
    _write_history(paths, history, metrics)
    record_seams(job, plan, paths.checkpoint, log)
    seconds = time.perf_counter() - started
    key, name = (plan.score_name, "F1" if plan.instance_model else "mIoU")
    best = (
        f", best validation {name} {max(h[key] or 0 for h in history):.3f} (epoch {metrics['best_epoch']})"
        if history and key in history[-1]
        else ""
    )
    log(
        f"train: done in {seconds:.0f} s, final loss {metrics.get('loss', float('nan')):.4f}{best}; "
        f"wrote {paths.checkpoint}, {paths.training_plot}"
    )
    return {"seconds": round(seconds, 1), **metrics, "checkpoint": str(paths.checkpoint)}


def training_plan(job: Job, log: Callable[[str], None] = print) -> TrainingPlan:
    """Everything the training loop needs: label rasters, areas, band statistics in the model card, weights."""
    spec = train_spec(job)
    scenes = [training_image(job, i, job.bands) for i in range(len(spec.scenes))]  # many files: one mosaic
    instance_model = is_instance_arch(job.model.arch)
    prepare = _instance_scene if instance_model else _semantic_scene
    prepared = [prepare(job, i, scene, log) for i, scene in enumerate(scenes)]
    mean, std = band_statistics([s.path for s in scenes], scenes[0].bands)
    card = _model_card(job, scenes[0], mean, std)
    initial_weights = str(job.model.weights) if job.model.weights else None
    if job.model.encoder_weights is not None:
        card, initial_weights = _pretrained_start(job, card, log)
    class_weights = None
    if _CLASS_WEIGHTED & set(spec.loss) and not instance_model:
        from geoseg.train.loss_weights import median_frequency_weights

        counts = np.sum([counts for _, counts in prepared if counts is not None], axis=0)
        class_weights = tuple(float(w) for w in median_frequency_weights(counts))
        log(
            "train: median-frequency class weights "
            + ", ".join(f"{name} {w:.2f}" for name, w in zip(job.classes, class_weights, strict=True))
        )
    return TrainingPlan(
        card=card,
        spec=spec,
        scenes=tuple(scene for scene, _ in prepared),
        stride=output_stride(build_model_from_card(card)),
        class_weights=class_weights,
        initial_weights=initial_weights,
    )


def _pretrained_start(job: Job, card: ModelCard, log: Callable[[str], None]) -> tuple[ModelCard, str]:
    """The model with its pretrained encoder, saved whole for every worker to start from; the card records them.

    Its other layers are seeded as the training loop seeds a model without them, so the two start alike but
    for the encoder. Read from the library's cache or the local file here, on the driver: workers need neither.
    """
    from geoseg.models.pretrained import build_pretrained_model  # imports torch

    assert job.model.encoder_weights is not None
    options: dict[str, Any] = dict(card.options)
    model, record = build_pretrained_model(
        card.arch,
        in_channels=card.in_channels,
        num_classes=card.num_classes,
        encoder=card.encoder,
        encoder_weights=job.model.encoder_weights.source,
        seed=train_spec(job).seed,
        **options,
    )
    start = JobPaths.of(job).train_dir / INITIAL_WEIGHTS
    start.parent.mkdir(parents=True, exist_ok=True)
    save_weights(start, model)
    log(
        f"train: encoder {card.encoder} starts from {record.weights!r} weights "
        f"({record.file}, sha256 {record.sha256[:12]})"
    )
    return card.model_copy(update={"encoder_weights": record}), str(start)


def _labels_of(job: Job, index: int, scene: SceneInfo):
    spec = train_spec(job)
    return load_labels(
        spec.scenes[index].labels,
        scene=scene,
        classes=job.classes,
        source=f"train.scenes[{index}].labels",
        **label_options(spec, index),
    )


def _semantic_scene(
    job: Job, index: int, scene: SceneInfo, log: Callable[[str], None]
) -> tuple[TrainingScene, np.ndarray]:
    """The scene's class raster, areas and class-presence grid; and its per-class pixel counts."""
    paths, spec = JobPaths.of(job), train_spec(job)
    labels = _labels_of(job, index, scene)
    out = rasterize_labels(labels, scene, paths.train_labels(index))
    instances = None
    if "border_ce" in spec.loss:  # U-Net's separation borders need each object's own id
        instances = str(rasterize_labels(labels, scene, paths.train_instances(index), instances=True))
    log(
        f"train: rasterized {len(labels)} label polygons of {spec.scenes[index].labels.name} onto "
        f"{scene.width}x{scene.height} px"
    )
    train_area, val_area = split_area(scene.height, scene.width, spec.validation_fraction, spec.validation_side)
    label_index = LabelIndex.build(out, train_area, len(job.classes))
    return TrainingScene(
        image=str(scene.path),
        labels=str(out),
        train_area=box_of(train_area),
        val_area=None if val_area is None else box_of(val_area),
        cells=label_index.cells,
        instances=instances,
    ), label_index.counts


def _instance_scene(job: Job, index: int, scene: SceneInfo, log: Callable[[str], None]) -> tuple[TrainingScene, None]:
    """The scene's instance-id raster (one id per label polygon), areas, ids' classes and centres."""
    paths, spec = JobPaths.of(job), train_spec(job)
    labels = _labels_of(job, index, scene)
    ids = rasterize_labels(labels, scene, paths.train_instances(index), instances=True)
    train_area, val_area = split_area(scene.height, scene.width, spec.validation_fraction, spec.validation_side)
    centres = instance_centres(ids, train_area)
    log(
        f"train: {len(labels)} instances in {spec.scenes[index].labels.name}, {len(centres)} of them in the "
        f"training area of {scene.path.name}"
    )
    return TrainingScene(
        image=str(scene.path),
        labels=str(ids),
        train_area=box_of(train_area),
        val_area=None if val_area is None else box_of(val_area),
        id_classes=(0, *labels.class_id.astype(int).tolist()),
        centres=tuple((int(r), int(c)) for r, c in centres),
    ), None


def _model_card(job: Job, first: SceneInfo, mean: list[float], std: list[float]) -> ModelCard:
    instance_model = is_instance_arch(job.model.arch)
    spec = train_spec(job)
    return ModelCard(
        geoseg_version=__version__,
        arch=job.model.arch,
        encoder=job.model.encoder,
        options=dict(job.model.options),
        classes=tuple(job.classes),
        bands=tuple(first.bands),
        dtype=first.dtype,
        normalization=Normalization(mean=tuple(mean), std=tuple(std)),
        train_tile_size=spec.tile_size,
        tile_size=None if job.tiling.auto else job.tiling.size,  # auto: chosen at prediction from `seams`
        halo=None if job.tiling.auto else resolved_halo(job),
        crs=first.crs.to_string(),
        pixel_size=(abs(first.transform.a), abs(first.transform.e)),
        loss={"maskrcnn": 1.0} if instance_model else dict(spec.loss),
    )


def _describe(job: Job) -> str:
    spec = train_spec(job)
    held_out = (
        f", {spec.validation_fraction:.0%} held out along the {spec.validation_side}"
        if spec.validation_fraction
        else ", no validation"
    )
    losses = (
        f"Mask R-CNN's own (RPN + box + class + mask), {spec.empty_ratio:.0%} of crops without instances"
        if is_instance_arch(job.model.arch)
        else " + ".join(f"{w:g} {name}" for name, w in spec.loss.items())
    )
    backbone = resolve_encoder(job.model.arch, job.model.encoder)  # the job default means the paper's backbone
    return (
        f"train: {job.model.arch}/{backbone}, {spec.epochs} epochs x {spec.steps_per_epoch} steps "
        f"x {spec.batch_size} crops of {spec.tile_size} px on {job.runtime.workers} worker(s){held_out}; "
        f"loss {losses}"
    )


def _already_trained(paths: JobPaths, run: str) -> bool:
    try:
        return read_card(paths.checkpoint).run == run
    except GeosegError:  # no checkpoint yet, or an unreadable one: train
        return False


def _write_history(paths: JobPaths, history: list[dict], metrics: dict) -> None:
    """Loss and validation mIoU per epoch: ``train/history.json`` and a PNG plot."""
    record = {
        "epochs": history,
        "best_epoch": metrics.get("best_epoch"),
        "stopped_early": bool(metrics.get("stopped_early")),
    }
    tmp = paths.training_history.with_name(paths.training_history.name + ".partial")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(paths.training_history)
    plot_history(history, paths.training_plot)
