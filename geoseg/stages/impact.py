"""Impact stage: the flood against what was water before, and the buildings, roads and zones it reaches.

With ``impact.pre_event`` the pre-event scene is first predicted with the job's own model into
``<output_dir>/pre_event/mosaic.zarr`` (the predict stage's machinery: resumable, skipped when
complete); with ``impact.permanent_water`` that layer is the reference. Buildings are the vectorize
stage's polygons of ``impact.building_class`` (run vectorize before impact). Then
:func:`geoseg.impact.assess.assess_impact` does the rest, band by band, as Ray tasks when the job
has more than one worker. The totals also go into ``metrics.json`` under ``impact``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from geoseg.config import Job
from geoseg.config.impact_spec import ImpactSpec
from geoseg.config.paths import JobPaths
from geoseg.errors import JobConfigError
from geoseg.impact.assess import ImpactInputs, assess_impact
from geoseg.impact.assets import AssetLayer
from geoseg.impact.flood import FLOOD
from geoseg.impact.outputs import IMPACT_GPKG
from geoseg.impact.reference import PermanentWater, PreEventMosaic, Reference
from geoseg.impact.scores import building_scores, flood_scores
from geoseg.impact.zones import Zones
from geoseg.io.mosaic import open_mosaic
from geoseg.stages.sections import evaluate_spec, predict_spec
from geoseg.vectorize.classes import RunTasks, in_process
from geoseg.vectorize.export import FORMATS, LAYER

__all__ = ["impact_metrics", "impact_spec", "pre_event_job", "run_impact"]


def impact_spec(job: Job) -> ImpactSpec:
    if job.impact is None:
        raise JobConfigError(f"job {job.name!r} needs an `impact:` section for this")
    return job.impact


def pre_event_job(job: Job) -> Job:
    """The job that predicts the pre-event scene: same model and tiling, its own output folder."""
    spec, predict = impact_spec(job), predict_spec(job)
    paths = JobPaths.of(job)
    scene = predict.model_copy(
        update={"scene": spec.pre_event, "checkpoint": predict.checkpoint or paths.checkpoint, "scores": False}
    )
    return job.model_copy(update={"output_dir": paths.pre_event, "predict": scene, "publish": None})


def _reference(job: Job, address: str | None, log: Callable[[str], None], force: bool) -> Reference:
    spec = impact_spec(job)
    if spec.pre_event is None:
        assert spec.permanent_water is not None  # the schema asks for one of the two
        return PermanentWater(spec.permanent_water)
    # Imported here: the evaluate stage imports this module for impact_metrics, and must not load torch for it.
    from geoseg.stages.predict import run_predict

    pre = pre_event_job(job)
    log(f"impact: predicting the pre-event scene {spec.pre_event} with the job's model")
    run_predict(pre, address=address, log=lambda line: log(f"impact: pre-event {line}"), force=force)
    return PreEventMosaic(JobPaths.of(pre).mosaic)


def _buildings(job: Job, paths: JobPaths, log: Callable[[str], None]) -> AssetLayer | None:
    """The vectorize stage's polygons of the building class (None, said, when there are none to read)."""
    name = impact_spec(job).building_class
    if name is None:
        return None
    vectors = paths.vectors / f"{LAYER}{FORMATS['gpkg']}"
    source = vectors if vectors.exists() else paths.vectors / f"{LAYER}.geojson"
    if not source.exists():
        log(f"impact: no polygons in {paths.vectors} (run the vectorize stage first): buildings are left out")
        return None
    return AssetLayer(source, where=f"\"class\" = '{name}'")


def run_impact(
    job: Job, *, address: str | None = None, log: Callable[[str], None] = print, force: bool = False
) -> dict:
    """Write ``impact/`` (impact.gpkg, GeoJSONs, impact.csv, impact.json) and the ``impact`` section of metrics."""
    spec, paths = impact_spec(job), JobPaths.of(job)
    started = time.perf_counter()
    reference = _reference(job, address, log, force)
    mosaic = open_mosaic(paths.mosaic)
    inputs = ImpactInputs(
        mosaic=paths.mosaic,
        reference=reference,
        water_class=job.classes.index(spec.water_class),
        folder=paths.impact,
        buildings=_buildings(job, paths, log),
        roads=AssetLayer(spec.roads) if spec.roads is not None else None,
        zones=Zones(spec.zones, spec.zone_field, mosaic.crs) if spec.zones is not None else None,
        buffer_m=spec.buffer_m,
        min_share=spec.min_flooded_share,
    )
    runtime = job.runtime
    parallel = runtime.workers > 1
    if parallel:
        from geoseg.runtime import iter_tasks, ray_session
    with ray_session(address or runtime.address, dashboard=runtime.dashboard) if parallel else nullcontext():
        run_tasks: RunTasks = (
            (lambda function, arguments: iter_tasks(function, arguments, cpus=runtime.cpus_per_worker))
            if parallel
            else in_process
        )
        summary = assess_impact(inputs, run_tasks, log)
    _note_in_metrics(paths, summary.as_json())
    total = summary.total
    log(
        f"impact: {total.flooded_km2:.4f} km² flood water ({summary.flood_polygons} polygons), "
        f"{total.buildings_flooded} of {total.buildings} buildings flooded, "
        f"{total.road_km_flooded:.2f} of {total.road_km:.2f} road km flooded, {len(summary.zones)} zones "
        f"in {time.perf_counter() - started:.0f} s; wrote {', '.join(str(f) for f in summary.files)}"
    )
    return summary.as_json() | {"files": [str(f) for f in summary.files]}


def _note_in_metrics(paths: JobPaths, impact: dict[str, Any]) -> None:
    """Put the totals under ``impact`` in metrics.json (evaluate, run after, keeps them and adds its scores)."""
    metrics = json.loads(paths.metrics.read_text()) if paths.metrics.exists() else {}
    metrics["impact"] = impact
    tmp = paths.metrics.with_name(paths.metrics.name + ".partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(paths.metrics)


def impact_metrics(job: Job, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The impact stage's totals, scored against ``evaluate.flood_truth`` / ``flooded_buildings`` where given.

    None when the job has no impact outputs (no `impact:` section, or the stage has not run since the
    mosaic was last predicted: a mosaic predicted again has no ``flood`` array until impact runs).
    """
    paths = JobPaths.of(job)
    summary = paths.impact / "impact.json"
    if job.impact is None or not summary.exists():
        return None
    if FLOOD not in open_mosaic(paths.mosaic).group:
        log(f"evaluate: {summary} is older than the mosaic (predicted again since); run the impact stage to score it")
        return None
    impact: dict[str, Any] = json.loads(summary.read_text())
    evaluate = evaluate_spec(job)
    if evaluate.flood_truth is not None:
        flood = flood_scores(paths.mosaic, evaluate.flood_truth)
        impact["flood_scores"] = flood.as_json()
        log(
            f"evaluate: flood extent IoU {flood.flood_iou or 0:.3f}; permanent water taken for flood "
            f"{100 * (flood.permanent_as_flood or 0):.2f}%"
        )
    if evaluate.flooded_buildings is not None:
        predicted = AssetLayer(paths.impact / IMPACT_GPKG, layer="buildings", where="flooded = 1")
        truth = AssetLayer(evaluate.flooded_buildings, where="flooded = 1")
        buildings = building_scores(paths.mosaic, predicted, truth)
        impact["building_scores"] = buildings.as_json()
        log(
            f"evaluate: flooded buildings: F1 {buildings.f1 or 0:.3f} (precision {buildings.precision or 0:.3f}, "
            f"recall {buildings.recall or 0:.3f}; {buildings.predicted} predicted, {buildings.true} true)"
        )
    return impact
