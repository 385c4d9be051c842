"""The impact stage's inputs and the evaluate stage's impact truths, checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pyogrio
import rasterio.warp

from geoseg.config import Job
from geoseg.io.raster import SceneInfo

__all__ = ["check_impact_inputs"]

_READ_ERRORS = (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError)


def _vector_layer(path: Path, field: str, problems: list[str], fields: tuple[str, ...] = (), fix: str = "") -> None:
    """A readable vector layer with a CRS (and ``fields``; ``fix`` says what to do when one is missing)."""
    try:
        info = pyogrio.read_info(path)
    except _READ_ERRORS as exc:
        problems.append(f"{path}: {field}: cannot be read as a vector layer ({exc}); give a GeoPackage or GeoJSON")
        return
    if not info["crs"]:
        problems.append(f"{path}: {field}: the layer has no CRS; set one (ogr2ogr -a_srs EPSG:…)")
    names = [str(f) for f in info["fields"]]
    for wanted in fields:
        if wanted not in names:
            problems.append(f"{path}: {field}: no field {wanted!r} (fields: {', '.join(names) or 'none'}){fix}")


def _overlap(pre: SceneInfo, scene: SceneInfo, problems: list[str]) -> None:
    """The pre-event scene must cover some of the post-event one, or every flood pixel would be unknown."""
    west, south, east, north = rasterio.warp.transform_bounds(pre.crs, scene.crs, *pre.bounds, densify_pts=21)
    left, bottom, right, top = scene.bounds
    if west >= right or east <= left or south >= top or north <= bottom:
        problems.append(
            f"{pre.path}: impact.pre_event: does not overlap predict.scene {scene.path} "
            f"(bounds {west:.1f}, {south:.1f}, {east:.1f}, {north:.1f} against {left:.1f}, {bottom:.1f}, "
            f"{right:.1f}, {top:.1f} in {scene.crs}); give the pre-event scene of the same place"
        )


def check_impact_inputs(
    job: Job, stages: list[str], scene: SceneInfo | None, problems: list[str], inspect_raster
) -> None:
    """Append one line per problem with ``impact:`` (for the impact stage) and evaluate's impact truths."""
    spec = job.impact
    if "impact" in stages and spec is not None:
        if spec.pre_event is not None:
            pre = inspect_raster(problems, spec.pre_event, "impact.pre_event", job.bands)
            if pre is not None and scene is not None:
                _overlap(pre, scene, problems)
                if len(pre.bands) != len(scene.bands):
                    problems.append(
                        f"{pre.path}: impact.pre_event: {len(pre.bands)} band(s), but predict.scene has "
                        f"{len(scene.bands)}; the same model reads both, so give a scene with the same bands"
                    )
        if spec.permanent_water is not None:
            _vector_layer(spec.permanent_water, "impact.permanent_water", problems)
        if spec.roads is not None:
            _vector_layer(spec.roads, "impact.roads", problems)
        if spec.zones is not None:
            fix = "; set impact.zone_field to the one naming each zone"
            _vector_layer(spec.zones, "impact.zones", problems, (spec.zone_field,), fix)
    evaluate = job.evaluate
    if "evaluate" in stages and evaluate is not None:
        if evaluate.flooded_buildings is not None:
            _vector_layer(evaluate.flooded_buildings, "evaluate.flooded_buildings", problems, ("flooded",))
        if evaluate.flood_truth is not None:
            truth = inspect_raster(problems, evaluate.flood_truth, "evaluate.flood_truth")
            if (
                truth is not None
                and scene is not None
                and (
                    truth.crs != scene.crs
                    or truth.transform != scene.transform
                    or truth.width != scene.width
                    or truth.height != scene.height
                )
            ):
                problems.append(
                    f"{truth.path}: evaluate.flood_truth: not on the scene's grid; write it on predict.scene's grid "
                    "(gdalwarp -te … -tr … -t_srs …)"
                )
