"""The impact stage in a job: bad inputs refused before anything runs, and a whole run through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

from geoseg.errors import JobConfigError
from geoseg.io.raster import inspect_scene
from geoseg.job.run import validate_job
from tests.factories import ORIGIN, UTM33, tiny_job, tiny_unet_checkpoint, write_geotiff

SIZE = 192  # the tiny scene's side


def _pre_event(folder, scene, *, transform=ORIGIN):
    """The tiny scene with its water strip painted over as ground: before the "flood"."""
    with rasterio.open(scene) as src:
        image = src.read()
    image[:, int(SIZE * 0.45) : int(SIZE * 0.55), :] = np.array([150, 130, 100], np.uint8)[:, None, None]
    return write_geotiff(folder / "pre" / "scene.tif", image, nodata=0, transform=transform)


def _zones(folder, field="name"):
    halves = [shapely.box(500000, 4999904, 500048, 5000000), shapely.box(500048, 4999904, 500096, 5000000)]
    path = folder / "zones.gpkg"
    gpd.GeoDataFrame({field: ["North", "South"]}, geometry=halves, crs=UTM33).to_file(path)
    return path


def _impact_job(folder, scene, labels, pre, zones, **impact):
    checkpoint = tiny_unet_checkpoint(folder / "model", inspect_scene(scene), ("background", "water", "vegetation"))
    spec = {"pre_event": str(pre), "building_class": "vegetation", "zones": str(zones)} | impact
    return tiny_job(
        folder,
        scene,
        labels,
        stages=["predict", "vectorize", "impact", "evaluate"],
        predict={"scene": str(scene), "batch_size": 4, "checkpoint": str(checkpoint), "scores": True},
        impact=spec,
    )


def test_bad_impact_inputs_are_each_one_line_all_at_once(tiny):
    folder, scene, labels = tiny
    far = _pre_event(folder, scene, transform=Affine(0.5, 0, 700000.0, 0, -0.5, 5000000.0))
    zones = _zones(folder, field="district")
    water = folder / "water.gpkg"
    gpd.GeoDataFrame({"x": [1]}, geometry=[shapely.box(0, 0, 1, 1)]).to_file(water)  # no CRS
    job = tiny_job(
        folder,
        scene,
        labels,
        stages=["train", "predict", "impact"],
        impact={"pre_event": str(far), "zones": str(zones), "roads": str(water), "building_class": None},
    )
    with pytest.raises(JobConfigError) as caught:
        validate_job(job)
    problems = caught.value.problems
    assert any("impact.pre_event: does not overlap predict.scene" in p and str(far) in p for p in problems)
    assert any(f"{zones}: impact.zones: no field 'name' (fields: district)" in p for p in problems)
    assert any(f"{water}: impact.roads: the layer has no CRS" in p for p in problems)
    result = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(job)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and not (folder / "out").exists()
    # A permanent-water reference in no CRS: the same one line.
    reference = {"permanent_water": str(water), "building_class": None}
    job = tiny_job(folder, scene, labels, stages=["train", "predict", "impact"], impact=reference)
    with pytest.raises(JobConfigError) as caught:
        validate_job(job)
    assert caught.value.problems == [
        f"{water}: impact.permanent_water: the layer has no CRS; set one (ogr2ogr -a_srs EPSG:…)"
    ]


def test_impact_needs_one_reference_and_known_classes(tiny):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels, impact={"water_class": "lake"})
    with pytest.raises(JobConfigError) as caught:
        validate_job(job)
    assert "exactly one of impact.pre_event" in " ".join(caught.value.problems)
    both = tiny_job(folder, scene, labels, impact={"pre_event": str(scene), "water_class": "lake"})
    with pytest.raises(JobConfigError, match=r"impact\.water_class 'lake'"):
        validate_job(both)


@pytest.mark.long
def test_a_job_with_impact_writes_its_outputs_and_scores(tiny):
    folder, scene, labels = tiny
    pre = _pre_event(folder, scene)
    job = _impact_job(folder, scene, labels, pre, _zones(folder))
    result = subprocess.run(
        [sys.executable, "-m", "geoseg.cli", "run", str(job)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = folder / "out"
    assert "impact: pre-event predict:" in result.stdout and "impact: " in result.stdout
    assert (out / "pre_event" / "mosaic.zarr").is_dir()
    layers = dict(pyogrio.list_layers(out / "impact" / "impact.gpkg"))
    assert set(layers) == {"flood_extent", "buildings", "roads", "zones"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [z["zone"] for z in metrics["impact"]["zones"]] == ["North", "South"]
    assert "model" in metrics and (out / "report.html").exists()


def test_impact_figures_older_than_the_mosaic_are_not_scored(tiny):
    """A mosaic predicted again has no flood array until impact runs: evaluate says so instead of failing."""
    from geoseg.config.paths import JobPaths
    from geoseg.job import load_job
    from geoseg.stages.impact import impact_metrics
    from tests.factories import scene_mosaic

    folder, scene, labels = tiny
    path = _impact_job(folder, scene, labels, _pre_event(folder, scene), _zones(folder))
    job = load_job(path)
    paths = JobPaths.of(job)
    scene_mosaic(paths.mosaic, scene, 64)
    paths.impact.mkdir(parents=True)
    (paths.impact / "impact.json").write_text("{}")
    lines = []
    assert impact_metrics(job, lines.append) is None
    assert lines == [
        f"evaluate: {paths.impact / 'impact.json'} is older than the mosaic (predicted again since); "
        "run the impact stage to score it"
    ]
