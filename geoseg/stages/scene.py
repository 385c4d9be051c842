"""The scene a job maps: one raster as given, or many files (or a resampled one) as one survey.

``predict.scene`` names one GeoTIFF (read as it is), or a list, a glob or a STAC
item or collection, or asks for another grid (``predict.crs``,
``predict.resolution``, ``predict.resample: model``). Those are mapped through
a GDAL VRT mosaic written to ``<output_dir>/survey/survey.vrt``
(:mod:`geoseg.io.survey`), which every stage then reads as one raster; a
training image given as many files gets ``<output_dir>/train/survey_<i>.vrt``.
The same job always gives the same mosaic, so a resumed run finds its grid again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.config.predict_spec import PredictSpec
from geoseg.errors import GeosegError, InputRasterError
from geoseg.io.raster import SceneInfo, inspect_scene
from geoseg.io.survey import SurveyGrid, expand_sources, plan_survey, write_survey_index
from geoseg.models.card import ModelCard
from geoseg.models.checkpoint import read_card
from geoseg.stages.resolution import model_pixel_size
from geoseg.stages.sections import predict_spec, train_spec

__all__ = ["SURVEY_INDEX", "is_survey", "names_many", "predicted_scene", "survey_files", "training_image"]

_GLOB_CHARS = "*?["

SURVEY_INDEX = "survey/survey.vrt"


def names_many(scene: object) -> bool:
    """A list, a glob or a STAC file: not one raster as it is."""
    if isinstance(scene, list):
        return True
    text = str(scene)
    return any(ch in text for ch in _GLOB_CHARS) or text.lower().endswith(".json")


def is_survey(spec: PredictSpec) -> bool:
    """Whether the scene is read through a survey mosaic rather than straight from one file."""
    return names_many(spec.scene) or spec.crs is not None or spec.resolution is not None or spec.resample == "model"


def survey_files(
    scene: Path | list[Path], bands: list[int] | None, *, field: str = "predict.scene", stac_asset: str | None = None
) -> list[SceneInfo]:
    """Every file of a survey, inspected; InputRasterError listing every problem of every file."""
    found: list[SceneInfo] = []
    problems: list[str] = []
    try:
        files = expand_sources(scene, field=field, stac_asset=stac_asset)
    except InputRasterError as exc:  # keep going: the files that are named are checked too
        problems.extend(exc.problems)
        files = [f for f in (scene if isinstance(scene, list) else [scene]) if not names_many(f)]
    for i, path in enumerate(files):
        try:
            found.append(inspect_scene(path, field=f"{field}[{i}]" if len(files) > 1 else field, bands=bands))
        except GeosegError as exc:
            problems.extend(getattr(exc, "problems", None) or [str(exc)])
    if problems:
        raise InputRasterError(problems)
    return found


def survey_resolution(spec: PredictSpec, first: SceneInfo, card: ModelCard | None) -> tuple[float, float] | None:
    """The grid's pixel size: predict.resolution, the model's for ``resample: model``, else the first file's."""
    if spec.resolution is not None:
        return spec.resolution, spec.resolution
    if spec.resample != "model":
        return None
    if card is None:
        raise InputRasterError("predict.resample: model needs the model card of the checkpoint; train first")
    size = model_pixel_size(first.transform, first.crs, first.height, first.width, card)
    if size is None:
        raise InputRasterError(
            "predict.resample: the model card records no pixel size (a checkpoint from an older geoseg); "
            "set predict.resolution instead"
        )
    return size


def predicted_scene(
    job: Job, bands: list[int] | None, *, card: ModelCard | None = None, check_only: bool = False
) -> SceneInfo:
    """The scene ``predict.scene`` names, as every stage reads it; a survey's mosaic is written to the output folder.

    ``check_only`` (the input check before any stage) writes nothing and, for ``resample: model`` before
    a model is trained, plans the grid at the files' own pixel size.
    """
    spec = predict_spec(job)
    if not is_survey(spec):
        assert not isinstance(spec.scene, list), "a list of files is a survey"
        return inspect_scene(spec.scene, field="predict.scene", bands=bands)
    files = survey_files(spec.scene, bands, stac_asset=spec.stac_asset)
    if card is None and spec.resample == "model" and not check_only:
        card = read_card(spec.checkpoint or JobPaths.of(job).checkpoint)
    resolution = None if card is None and check_only else survey_resolution(spec, files[0], card)
    grid = plan_survey(files, field="predict.scene", crs=spec.crs, resolution=resolution)
    return _survey(grid, files, Path(job.output_dir) / SURVEY_INDEX, write=not check_only)


def training_image(job: Job, index: int, bands: list[int] | None, *, check_only: bool = False) -> SceneInfo:
    """``train.scenes[index].image``: one raster, or many files as one survey on the first file's grid."""
    image = train_spec(job).scenes[index].image
    field = f"train.scenes[{index}].image"
    if not names_many(image):
        assert not isinstance(image, list)
        return inspect_scene(image, field=field, bands=bands)
    files = survey_files(image, bands, field=field)
    grid = plan_survey(files, field=field)
    return _survey(grid, files, JobPaths.of(job).train_dir / f"survey_{index}.vrt", write=not check_only)


def _survey(grid: SurveyGrid, files: list[SceneInfo], path: Path, *, write: bool) -> SceneInfo:
    survey = replace(
        files[0],
        path=path,
        height=grid.height,
        width=grid.width,
        crs=grid.crs,
        transform=grid.transform,
        nodata=None,  # the mosaic has no nodata value: its mask band marks gaps and every file's nodata
        sources=tuple(str(f.path) for f in files),
    )
    if write:
        write_survey_index(grid, files, path)
    return survey
