"""Check a job's inputs before any stage runs, reporting every problem at once.

``geoseg validate`` prints these; ``geoseg run`` refuses to start while any
remain, so a bad input never leaves half-written outputs behind. Every raster
is checked whole, cheaply: its header, its block index against the file's size
and a sample of its blocks decoded (:mod:`geoseg.io.integrity`).
"""

from __future__ import annotations

from pathlib import Path

from geoseg.config import Job
from geoseg.config.label_values import label_kind
from geoseg.config.paths import JobPaths
from geoseg.errors import GeosegError
from geoseg.io.integrity import check_raster_blocks
from geoseg.io.labels import label_options, load_labels
from geoseg.io.raster import SceneInfo, inspect_scene
from geoseg.job.impact_preflight import check_impact_inputs
from geoseg.job.weights import check_encoder_weights
from geoseg.models.card import ModelCard
from geoseg.models.checkpoint import read_card
from geoseg.models.known import ARCHITECTURE_NAMES, INSTANCE_ARCHITECTURE_NAMES, known_stride
from geoseg.stages.scene import is_survey, names_many, predicted_scene, training_image
from geoseg.tiling import check_tile_size

__all__ = ["check_job_inputs"]


def _collect(problems: list[str], call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except GeosegError as exc:  # one line per problem: some errors carry several (every problem of a label file)
        problems.extend(getattr(exc, "problems", None) or [str(exc)])
        return None


def _inspect_raster(problems: list[str], path, field: str, bands: list[int] | None = None) -> SceneInfo | None:
    """A raster's header, then its body: the block index and a sample of decoded blocks (milliseconds)."""
    scene = _collect(problems, inspect_scene, path, field=field, bands=bands)
    if scene is not None:
        _collect(problems, check_raster_blocks, path, field=field)
    return scene


def _check_model(job: Job, source: str, problems: list[str]) -> None:
    arch = job.model.arch
    if arch not in ARCHITECTURE_NAMES:
        problems.append(
            f"{source}: model.arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURE_NAMES)}"
        )
        return
    stride = known_stride(arch, job.model.encoder, job.model.options)
    one_crop = bool(job.train and job.train.batch_size == 1 and arch not in INSTANCE_ARCHITECTURE_NAMES)
    model = None
    if stride is None or one_crop:  # the table cannot answer: build the model (imports torch, ~4 s)
        from geoseg.models.registry import build_model, output_stride

        model = _collect(
            problems,
            build_model,
            arch,
            in_channels=3,
            num_classes=len(job.classes),
            encoder=job.model.encoder,
            **job.model.options,
        )
        if model is None:
            problems[-1] = f"{source}: {problems[-1]}"
            return
        stride = output_stride(model)
    assert job.tiling.halo != "auto", "load_job measures halo: auto before the inputs are checked"
    checks = [] if job.tiling.auto else [("tiling.tile_size", job.tiling.size, job.tiling.halo)]  # auto: chosen fit
    for field, size, halo in [*checks, ("train.tile_size", job.train.tile_size if job.train else None, 0)]:
        message = check_tile_size(size, stride, arch, halo) if size else None
        if message:
            problems.append(f"{source}: {field}: {message}")
    if job.train and one_crop and not _trains_on_single_crops(model, job.train.tile_size):
        problems.append(
            f"{source}: train.batch_size: {arch} normalises pooled features over the batch "
            "and cannot train on one crop at a time; use batch_size 2 or more"
        )
    if job.model.weights and not Path(job.model.weights).is_file():
        problems.append(f"{source}: model.weights: file not found: {job.model.weights}")


def _check_checkpoint_stride(job: Job, source: str, card: ModelCard, checkpoint: Path, problems: list[str]) -> None:
    """The checkpoint's model, not the job's `model:`, is what predicts: check the tiles against its stride."""
    stride = known_stride(card.arch, card.encoder, card.options)
    if stride is None:  # not in the table: build the model (imports torch)
        from geoseg.models.checkpoint import build_model_from_card
        from geoseg.models.registry import output_stride

        model = _collect(problems, build_model_from_card, card)
        if model is None:
            return
        stride = output_stride(model)
    assert job.tiling.halo != "auto", "load_job measures halo: auto before the inputs are checked"
    if job.tiling.auto:  # chosen among the card's tilings, all on the stride
        return
    message = check_tile_size(job.tiling.size, stride, card.arch, job.tiling.halo)
    if message:
        problems.append(f"{source}: tiling.tile_size: {message} (for the {card.arch} model in {checkpoint})")


def _trains_on_single_crops(model, size: int) -> bool:
    """BatchNorm after global pooling (DeepLab's ASPP image pooling) needs more than one value per channel."""
    import torch

    model.train()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except ValueError as exc:  # "Expected more than 1 value per channel when training"
        return "more than 1 value per channel" not in str(exc)
    return True


def _check_band_match(scene: SceneInfo, reference: SceneInfo, field: str, problems: list[str]) -> None:
    if len(scene.bands) != len(reference.bands) or scene.dtype != reference.dtype:
        problems.append(
            f"{scene.path}: {field}: {len(scene.bands)} band(s) of {scene.dtype}, but the training scene "
            f"{reference.path.name} has {len(reference.bands)} of {reference.dtype}; "
            + scene.mismatch_fix(len(reference.bands), reference.dtype, "the model")
        )


def check_job_inputs(job: Job, stages: list[str], source: str) -> list[str]:
    """Return one line per problem with the job's inputs for ``stages`` (empty when all is well)."""
    problems: list[str] = []
    _check_model(job, source, problems)
    problems.extend(check_encoder_weights(job, stages, source))
    first = _check_training_inputs(job, problems) if "train" in stages and job.train else None
    scene = None
    if {"predict", "impact", "evaluate"} & set(stages) and job.predict:
        card, checkpoint = None, None
        if "train" not in stages and "predict" in stages:  # an existing model predicts: its card rules
            checkpoint = job.predict.checkpoint or JobPaths.of(job).checkpoint
            card = _checkpoint_card(job, source, checkpoint, problems)
            if card is not None and job.tiling.auto and card.seams is None:
                problems.append(
                    f"{source}: tiling: auto chooses by the seams the train stage measures, and the model in "
                    f"{checkpoint} has none (trained by an older geoseg, or without a validation strip); "
                    "retrain it, or give tiling.tile_size and tiling.halo"
                )
        scene = _predicted_scene(job, card, problems)
        if scene is not None and first is not None:
            _check_band_match(scene, first, "predict.scene", problems)
        if scene is not None and card is not None and checkpoint is not None:
            _check_scene_against_card(job, source, scene, card, checkpoint, problems)
        if scene is not None and "evaluate" in stages and job.evaluate:
            _check_reference_labels(job, scene, problems)
    check_impact_inputs(job, stages, scene, problems, _inspect_raster)
    if "panoptic" in stages and job.panoptic is not None:
        _check_things_mosaic(job.panoptic.things, source, problems)
    return problems


def _check_things_mosaic(things: Path, source: str, problems: list[str]) -> None:
    """``panoptic.things`` must be an instance job's mosaic with its table beside it."""
    if not (things / "instances").is_dir():
        problems.append(
            f"{source}: panoptic.things: {things} is not an instance job's mosaic (no instances array); run an "
            "instance job (model.arch maskrcnn_*, e.g. jobs/building_instances.yaml) on the same scene first"
        )
    elif not (things.parent / "instances.parquet").is_file():
        problems.append(f"{source}: panoptic.things: {things.parent / 'instances.parquet'} is missing; predict again")


def _check_training_inputs(job: Job, problems: list[str]) -> SceneInfo | None:
    """Every training scene and its labels; the first readable scene, which the others must match."""
    assert job.train is not None
    first: SceneInfo | None = None
    for i, pair in enumerate(job.train.scenes):
        if job.model.arch in INSTANCE_ARCHITECTURE_NAMES:  # one id per polygon or box; a raster has no objects
            problems += [
                f"{path}: train.scenes[{i}].{where}: a label raster holds classes, not objects; "
                f"{job.model.arch} needs polygons or a box table (one object each)"
                for where, path in pair.label_paths()
                if label_kind(path) == "raster"
            ]
        scene = _training_image(job, i, problems)
        if scene is None:
            continue
        if first is None:
            first = scene
        else:
            _check_band_match(scene, first, f"train.scenes[{i}].image", problems)
        _collect(
            problems,
            load_labels,
            pair.labels,
            scene=scene,
            classes=job.classes,
            source=f"train.scenes[{i}].labels",
            **label_options(job.train, i),
        )
    return first


def _training_image(job: Job, index: int, problems: list[str]) -> SceneInfo | None:
    """A training image: one raster checked whole, or many files (each checked whole) as one mosaic."""
    assert job.train is not None
    image = job.train.scenes[index].image
    if not names_many(image):
        assert not isinstance(image, list)
        return _inspect_raster(problems, image, f"train.scenes[{index}].image", job.bands)
    scene = _collect(problems, training_image, job, index, job.bands, check_only=True)
    for k, path in enumerate(scene.sources if scene is not None else ()):
        _collect(problems, check_raster_blocks, path, field=f"train.scenes[{index}].image[{k}]")
    return scene


def _checkpoint_card(job: Job, source: str, checkpoint: Path, problems: list[str]) -> ModelCard | None:
    """The card of the checkpoint a predict-only job uses, and whether the job's ``bands:`` agree with it."""
    card = _collect(problems, read_card, checkpoint)
    bands = job.bands
    if card is not None and bands and list(bands) != list(card.bands):
        problems.append(
            f"{source}: bands: {list(bands)} differs from the bands the model in {checkpoint} "
            f"was trained on ({list(card.bands)}); remove `bands:` or set it to {list(card.bands)}"
        )
    return card


def _predicted_scene(job: Job, card: ModelCard | None, problems: list[str]) -> SceneInfo | None:
    """The scene to predict, read with the bands prediction will read (the card's when the job names none)."""
    assert job.predict is not None
    if is_survey(job.predict):
        return _survey_scene(job, card, problems)
    scene = _inspect_raster(problems, job.predict.scene, "predict.scene", job.bands)
    if (
        scene is not None
        and card is not None
        and not job.bands
        and all(1 <= b <= scene.count and b != scene.alpha for b in card.bands)
    ):
        # Prediction reads the card's bands when the job names none (as run_predict does).
        scene = _collect(problems, inspect_scene, job.predict.scene, field="predict.scene", bands=card.bands)
    return scene


def _survey_scene(job: Job, card: ModelCard | None, problems: list[str]) -> SceneInfo | None:
    """A survey of many files: every file checked (header and blocks), then the grid they share planned."""
    bands = job.bands or (list(card.bands) if card is not None else None)
    scene = _collect(problems, predicted_scene, job, bands, card=card, check_only=True)
    for i, path in enumerate(scene.sources if scene is not None else ()):
        _collect(problems, check_raster_blocks, path, field=f"predict.scene[{i}]")
    return scene


def _check_scene_against_card(
    job: Job, source: str, scene: SceneInfo, card: ModelCard, checkpoint: Path, problems: list[str]
) -> None:
    """The scene's bands and data type are the model's; the tile size fits the checkpoint's own model."""
    if len(card.bands) != len(scene.bands) or card.dtype != scene.dtype:
        problems.append(
            f"{scene.path}: predict.scene: {len(scene.bands)} band(s) of {scene.dtype}, but the "
            f"model in {checkpoint} was trained on {len(card.bands)} of {card.dtype}; "
            + scene.mismatch_fix(len(card.bands), card.dtype, "the model")
        )
    if (card.arch, card.encoder, card.options) != (job.model.arch, job.model.encoder, dict(job.model.options)):
        _check_checkpoint_stride(job, source, card, checkpoint, problems)


def _check_reference_labels(job: Job, scene: SceneInfo, problems: list[str]) -> None:
    """``evaluate.labels``: a label raster on the scene's grid, or polygons whose classes the job knows."""
    assert job.evaluate is not None
    labels = job.evaluate.labels  # a Path, or a RemotePath for an s3:// URI
    if labels.suffix.lower() in (".tif", ".tiff"):
        truth = _inspect_raster(problems, labels, "evaluate.labels")
        if truth is not None and (truth.height, truth.width, truth.transform, truth.crs) != (
            scene.height,
            scene.width,
            scene.transform,
            scene.crs,
        ):
            problems.append(
                f"{labels}: evaluate.labels: label raster is not on the scene's grid; "
                "give polygons instead, or warp it onto the scene (gdalwarp -te -tr)"
            )
        return
    _collect(
        problems,
        load_labels,
        labels,
        scene=scene,
        classes=job.classes,
        source="evaluate.labels",
        **label_options(job.train),
    )
