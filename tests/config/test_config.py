"""Job files: loading, paths relative to the job file, every problem at once, and path rebasing for a cluster."""

from pathlib import Path

import pytest
import yaml

from geoseg.errors import JobConfigError
from geoseg.job import load_job
from tests.factories import REPO, tiny_job, tiny_scene

MINIMAL = {
    "name": "t",
    "output_dir": "out",
    "classes": ["background", "water"],
    "stages": ["predict"],
    "predict": {"scene": "scene.tif"},
}


def write(tmp_path, data) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def problems(tmp_path, data) -> list[str]:
    with pytest.raises(JobConfigError) as info:
        load_job(write(tmp_path, data))
    return info.value.problems


def test_flood_survey_job_loads_with_paths_relative_to_the_job_file():
    job = load_job(REPO / "jobs" / "flood_survey.yaml")
    assert job.train.scenes[0].image == REPO / "data" / "demo" / "train" / "scene.tif"
    assert job.output_dir == REPO / "out" / "flood_survey"
    assert job.tiling.auto  # chosen at prediction from the seams training measures


def test_every_problem_reported_at_once_one_line_each(tmp_path):
    data = {
        **MINIMAL,
        "tiling": {"halo": -8, "tile_sise": 512},
        "bogus": 1,
        "predict": {"scene": "s.tif", "batch_size": 0},
    }
    lines = problems(tmp_path, data)
    source = str(tmp_path / "job.yaml")
    assert f"{source}: tiling.halo: must be >= 0 (got -8)" in lines
    assert any(line.startswith(f"{source}: tiling.tile_sise: unknown key") and "tile_size" in line for line in lines)
    assert any(line.startswith(f"{source}: bogus: unknown key") for line in lines)
    assert f"{source}: predict.batch_size: must be > 0 (got 0)" in lines
    assert all("\n" not in line for line in lines)


def test_halo_leaving_no_core_is_refused_with_a_fix(tmp_path):
    lines = problems(tmp_path, {**MINIMAL, "tiling": {"tile_size": 64, "halo": 32}})
    assert len(lines) == 1 and "leaves no core" in lines[0] and "tiling" in lines[0]


def test_stage_without_its_section_is_refused(tmp_path):
    lines = problems(tmp_path, {**MINIMAL, "stages": ["train", "predict"]})
    assert "'train' needs a `train:` section" in lines[0]


def test_unknown_stage_and_duplicate_classes(tmp_path):
    lines = problems(tmp_path, {**MINIMAL, "stages": ["predict", "paint"], "classes": ["a", "a"]})
    assert any("stages.1" in line and "train" in line for line in lines)
    assert any("classes" in line and "unique" in line for line in lines)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(JobConfigError, match="not valid YAML"):
        load_job(path)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobConfigError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")


def test_auto_halo_resolves_to_the_measured_context(tmp_path):
    job = load_job(write(tmp_path, {**MINIMAL, "tiling": {"tile_size": 1024, "halo": "auto"}}))
    assert job.tiling.halo == 288 and job.tiling.core == 1024 - 2 * 288  # unet/resnet18: radius 281 → 288
    lines = problems(tmp_path, {**MINIMAL, "tiling": {"tile_size": 512, "halo": "auto"}})
    assert "leaves no core with unet's safe halo 288" in lines[0]


def test_model_options_may_not_set_what_geoseg_sets(tmp_path):
    from geoseg.config.schema import Job

    with pytest.raises(Exception, match=r"in_channels.*set by geoseg"):
        Job.model_validate(
            {
                "name": "x",
                "output_dir": str(tmp_path),
                "classes": ["a", "b"],
                "model": {"arch": "unet", "options": {"in_channels": 4}},
            }
        )


def test_job_schema_knows_exactly_the_losses_geoseg_builds(tmp_path):
    from geoseg.config.schema import LOSS_NAMES
    from geoseg.train.losses import LOSSES

    assert tuple(LOSS_NAMES) == tuple(LOSSES)
    scene, labels = tiny_scene(tmp_path)
    job_path = tiny_job(tmp_path, scene, labels)
    job = yaml.safe_load(job_path.read_text())
    job["train"]["loss"] = {"ce": 1.0, "dise": 1.0}
    job_path.write_text(yaml.safe_dump(job))
    with pytest.raises(JobConfigError, match=r"train\.loss: .*unknown loss 'dise'; choose from ce, weighted_ce"):
        load_job(job_path)


def test_the_shipped_job_names_the_same_files_from_the_cluster(tmp_path):
    from geoseg.config.load import rebase_job_paths

    data = {
        "name": "x",
        "output_dir": "../out/x",
        "classes": ["a", "b"],
        "model": {"weights": "w.safetensors", "options": {"encoder_depth": 3}},
        "train": {"scenes": [{"image": "../data/a.tif", "labels": "/abs/labels.gpkg"}]},
        "predict": {"scene": "s3://bucket/survey.tif", "checkpoint": "ckpt"},
        "evaluate": {"labels": "truth.gpkg"},
        "runtime": {"address": "10.0.0.1:6379"},
    }
    shipped = rebase_job_paths(data, "/home/ray/geoseg/jobs")
    assert shipped == {
        **data,
        "output_dir": "/home/ray/geoseg/out/x",
        "model": {"weights": "/home/ray/geoseg/jobs/w.safetensors", "options": {"encoder_depth": 3}},
        "train": {"scenes": [{"image": "/home/ray/geoseg/data/a.tif", "labels": "/abs/labels.gpkg"}]},
        "predict": {"scene": "s3://bucket/survey.tif", "checkpoint": "/home/ray/geoseg/jobs/ckpt"},
        "evaluate": {"labels": "/home/ray/geoseg/jobs/truth.gpkg"},
    }
    assert data["output_dir"] == "../out/x"  # the caller's mapping is left alone


def test_predict_settings_that_cannot_go_together_are_refused(tmp_path):
    skip_blend = {**MINIMAL, "tiling": {"stitch": "blend"}, "predict": {"scene": "s.tif", "on_read_error": "skip"}}
    assert problems(tmp_path, skip_blend) == [
        f"{tmp_path / 'job.yaml'}: (top level): predict.on_read_error: skip leaves unread tiles out, which blending "
        "cannot do without; use tiling.stitch: crop, or on_read_error: stop"
    ]
    both = {**MINIMAL, "predict": {"scene": "s.tif", "resample": "model", "resolution": 0.5}}
    assert problems(tmp_path, both) == [
        f"{tmp_path / 'job.yaml'}: predict: resample: model reads at the model's pixel size; "
        "remove resolution, or resample"
    ]


def test_a_survey_list_is_resolved_against_the_job_file(tmp_path):
    from geoseg.config.load import rebase_job_paths

    job = load_job(write(tmp_path, {**MINIMAL, "predict": {"scene": ["a.tif", "tiles/*.tif", "s3://b/c.tif"]}}))
    assert [str(p) for p in job.predict.scene] == [
        str(tmp_path / "a.tif"),
        str(tmp_path / "tiles/*.tif"),
        "s3://b/c.tif",
    ]
    rebased = rebase_job_paths({"predict": {"scene": ["a.tif", "/abs/b.tif"]}}, "/cluster/jobs")
    assert rebased["predict"]["scene"] == ["/cluster/jobs/a.tif", "/abs/b.tif"]


def test_auto_tiling_is_written_short_or_long_and_refuses_what_it_would_choose(tmp_path):
    assert load_job(write(tmp_path, {**MINIMAL, "tiling": "auto"})).tiling.auto
    job = load_job(write(tmp_path, {**MINIMAL, "tiling": {"tile_size": "auto", "max_seam_error": 0.05}}))
    assert job.tiling.auto and job.tiling.max_seam_error == 0.05
    with pytest.raises(ValueError, match="must be chosen"):
        job.tiling.core  # noqa: B018  (a property that raises until the predict stage chooses)
    source = str(tmp_path / "job.yaml")
    lines = problems(tmp_path, {**MINIMAL, "tiling": {"tile_size": "auto", "halo": 64}})
    assert lines == [f"{source}: tiling: tile_size auto chooses the halo too; remove `halo`"]
    lines = problems(tmp_path, {**MINIMAL, "tiling": {"tile_size": "auto", "stitch": "blend"}})
    assert lines == [f"{source}: tiling: tile_size auto chooses by crop-mode seams; use stitch: crop"]
    lines = problems(tmp_path, {**MINIMAL, "tiling": {"tile_size": 0}})
    assert lines == [f"{source}: tiling.tile_size: must be > 0 (got 0)"]


def test_auto_tiling_needs_seams_a_training_can_measure(tmp_path):
    source = str(tmp_path / "job.yaml")
    train = {"scenes": [{"image": "a.tif", "labels": "a.gpkg"}], "validation_fraction": 0, "measure_seams": False}
    lines = problems(tmp_path, {**MINIMAL, "stages": ["train", "predict"], "tiling": "auto", "train": train})
    assert lines == [
        f"{source}: train.validation_fraction: 0 leaves no held-out strip to measure seams on for tiling: auto; "
        "use e.g. 0.15, or give tiling.tile_size and tiling.halo",
        f"{source}: train.measure_seams: false leaves tiling: auto nothing to choose by; remove it, or give "
        "tiling.tile_size and tiling.halo",
    ]
    lines = problems(tmp_path, {**MINIMAL, "tiling": "auto", "model": {"arch": "maskrcnn_resnet50_fpn"}})
    assert len(lines) == 1 and "tiling: auto chooses by the seams of a segmentation model" in lines[0]


def test_a_dense_crf_is_switched_on_or_tuned_and_its_settings_checked(tmp_path):
    source = str(tmp_path / "job.yaml")
    assert load_job(write(tmp_path, MINIMAL)).predict.crf is None
    crf = load_job(write(tmp_path, {**MINIMAL, "predict": {"scene": "s.tif", "crf": True}})).predict.crf
    assert (crf.iterations, crf.window, crf.bilateral_weight, crf.halo) == (5, 11, 4.0, 25)
    bad = {"iterations": -1, "window": 4, "spatial_sigma": 0, "bilateral_wieght": 2}
    lines = problems(tmp_path, {**MINIMAL, "predict": {"scene": "s.tif", "crf": bad}})
    assert sorted(lines) == [
        f"{source}: predict.crf.bilateral_wieght: unknown key; remove it or use one of: iterations, spatial_sigma, "
        "spatial_weight, bilateral_sigma_xy, bilateral_sigma_rgb, bilateral_weight, window",
        f"{source}: predict.crf.iterations: must be >= 0 (got -1)",
        f"{source}: predict.crf.spatial_sigma: must be > 0 (got 0)",
        f"{source}: predict.crf.window: must be odd, a window centred on its pixel; use 5 (got 4)",
    ]
    instances = {**MINIMAL, "model": {"arch": "maskrcnn_resnet50_fpn"}, "predict": {"scene": "s.tif", "crf": True}}
    assert problems(tmp_path, instances) == [
        f"{source}: predict.crf: maskrcnn_resnet50_fpn predicts instances, not per-pixel class scores for a CRF "
        "to refine; remove predict.crf"
    ]


def test_the_gated_scnn_loss_needs_a_gated_scnn(tmp_path):
    scene, labels = tiny_scene(tmp_path)
    job = yaml.safe_load(tiny_job(tmp_path, scene, labels).read_text())
    job["train"]["loss"] = {"ce": 1.0, "gscnn_edge": 1.0}
    lines = problems(tmp_path, job)
    assert lines == [
        f"{tmp_path / 'job.yaml'}: (top level): train.loss.gscnn_edge: supervises the boundary stream of a gatedscnn "
        "model, which unet has not; use model.arch: gatedscnn, or remove gscnn_edge"
    ]
    job["model"] = {"arch": "gatedscnn", "encoder": "resnet34"}
    assert load_job(write(tmp_path, job)).train.loss == {"ce": 1.0, "gscnn_edge": 1.0}
