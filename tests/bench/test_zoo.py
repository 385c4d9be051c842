"""``geoseg bench zoo``: the derived jobs, the scene crop, resuming, and one architecture end to end."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.windows import Window

from geoseg.bench.zoo import (
    ROWS,
    SEMANTIC_ARCHITECTURES,
    TABLE,
    ZooBudget,
    ZooRow,
    _source_job,
    bench_zoo,
    derived_job,
    markdown_table,
    write_crop,
)
from geoseg.errors import JobConfigError
from geoseg.job import load_job
from tests.factories import tiny_job, tiny_scene


def _row(arch="segnet", miou=0.5, budget=None, crf=False) -> ZooRow:
    return ZooRow(
        arch=arch, encoder="vgg16_bn", crf=crf, parameters=29_444_162, miou=miou, train_samples_per_s=1.25,
        predict_mpix_per_s=0.5, tile_size=1024, halo=192, seam_changed_percent=0.0, seconds=60.0,
        other_cpu_share=0.01, budget=asdict(budget or ZooBudget()),
    )  # fmt: skip


def test_every_semantic_architecture_and_no_instance_one():
    assert {"unet", "fcn8s", "segnet", "fcdensenet103", "deeplabv2", "gatedscnn"} <= set(SEMANTIC_ARCHITECTURES)
    assert not any(arch.startswith("maskrcnn") for arch in SEMANTIC_ARCHITECTURES)


def test_crop_is_the_central_window_with_its_georeference(tmp_path):
    scene, _ = tiny_scene(tmp_path, size=192)
    crop = write_crop(scene, tmp_path, 100)
    with rasterio.open(scene) as src, rasterio.open(crop) as out:
        window = Window(46, 46, 100, 100)
        assert np.array_equal(out.read(), src.read(window=window))
        assert out.transform == src.window_transform(window)
        assert out.crs == src.crs and out.nodata == src.nodata
    with pytest.raises(JobConfigError, match=r"--crop 200 is larger than the scene \(192 x 192 px\)"):
        write_crop(scene, tmp_path, 200)


def test_derived_job_keeps_the_source_data_and_settings(tmp_path):
    scene, labels = tiny_scene(tmp_path, size=192)
    job_file = tiny_job(tmp_path, scene, labels)
    source = _source_job(job_file)
    budget = ZooBudget(epochs=3, steps_per_epoch=4, batch_size=2, crop=None)
    derived = tmp_path / "zoo" / "segnet" / "job.yaml"
    derived.parent.mkdir(parents=True)
    derived.write_text(yaml.safe_dump(derived_job(source, "segnet", tmp_path / "zoo", budget, str(scene), crf=True)))
    job, original = load_job(derived), load_job(job_file)
    assert job.model.arch == "segnet" and job.tiling.auto
    assert (job.train.epochs, job.train.steps_per_epoch, job.train.batch_size) == (3, 4, 2)
    assert job.train.loss == original.train.loss and job.train.tile_size == original.train.tile_size
    assert job.train.scenes == original.train.scenes and job.classes == original.classes
    assert job.runtime == original.runtime
    assert job.predict.crf is not None  # the CRF row: the job's dense CRF with its defaults
    assert job.output_dir == (tmp_path / "zoo" / "segnet").resolve()


def test_unknown_architectures_are_refused_before_anything_runs(tmp_path):
    scene, labels = tiny_scene(tmp_path, size=192)
    job_file = tiny_job(tmp_path, scene, labels)
    with pytest.raises(JobConfigError, match=r"unknown semantic architecture\(s\) fcn9s, maskrcnn_resnet18_fpn"):
        bench_zoo(job_file, tmp_path / "zoo", archs=["fcn9s", "maskrcnn_resnet18_fpn"])
    with pytest.raises(JobConfigError, match=r"--crf deeplabv2: also name it in --archs"):
        bench_zoo(job_file, tmp_path / "zoo", archs=["deeplabv1"], crf_archs=["deeplabv2"])
    assert not (tmp_path / "zoo").exists()


def test_rows_already_measured_with_the_same_budget_are_not_run_again(tmp_path):
    scene, labels = tiny_scene(tmp_path, size=192)
    job_file = tiny_job(tmp_path, scene, labels)
    budget = ZooBudget(crop=None)
    out = tmp_path / "zoo"
    out.mkdir()
    rows = [_row(), _row("segnet", 0.25, ZooBudget(epochs=9, crop=None)), _row("fcn8s", 0.75, budget)]
    (out / ROWS).write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    lines = []
    got = bench_zoo(job_file, out, archs=["fcn8s"], budget=budget, log=lines.append)
    assert got == [rows[2]] and lines == []  # the other budgets' rows are not this zoo's
    assert "| fcn8s | vgg16_bn | 29.44 M | 0.750 |" in (out / TABLE).read_text()


def test_table_is_sorted_by_miou_and_names_the_crf_rows():
    table = markdown_table([_row("segnet", 0.5), _row("deeplabv2", 0.8, crf=True), _row("fcn8s", 0.7)])
    names = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert names == ["deeplabv2 + CRF", "fcn8s", "segnet"]
    assert "| 1.25 | 0.500 | 1024/192 | 0.0000% | 0.01 |" in table


@pytest.mark.long
def test_zoo_trains_predicts_and_scores_an_architecture(tmp_path):
    scene, labels = tiny_scene(tmp_path, size=192)
    train = {
        "scenes": [{"image": str(scene), "labels": str(labels)}], "tile_size": 64, "batch_size": 2,
        "epochs": 2, "steps_per_epoch": 2, "validation_fraction": 0.3,
    }  # fmt: skip
    job_file = tiny_job(tmp_path, scene, labels, train=train)
    budget = ZooBudget(epochs=2, steps_per_epoch=2, batch_size=2, crop=128)
    row, crf = bench_zoo(
        job_file, tmp_path / "zoo", archs=["pspnet"], crf_archs=["pspnet"], budget=budget, log=lambda _: None
    )
    assert (row.crf, crf.crf, crf.name) == (False, True, "pspnet + CRF")
    assert crf.parameters == row.parameters and crf.train_samples_per_s == row.train_samples_per_s  # same weights
    assert row.arch == "pspnet" and row.encoder == "resnet18" and row.parameters > 1_000_000
    assert 0 <= row.miou <= 1 and row.train_samples_per_s > 0 and row.predict_mpix_per_s > 0
    assert row.seam_changed_percent is not None  # the tiling auto chose is one the card measured
    metrics = json.loads((tmp_path / "zoo" / "pspnet" / "metrics.json").read_text())
    assert metrics["model"]["mean_iou"] == pytest.approx(crf.miou, abs=1e-4)  # the CRF row's, scored last
    with rasterio.open(tmp_path / "zoo" / "scene_crop128.tif") as crop:
        assert crop.width == crop.height == 128
