"""Run records and idempotent reruns: run.json per run, a finished job is a no-op, --force redoes it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

import geoseg
from geoseg.cli import main
from geoseg.errors import StageError
from geoseg.io.mosaic import open_mosaic
from geoseg.job import load_job
from geoseg.job.runrecord import code_version, finished_run
from tests.factories import REPO, TINY_UNET, fit_in_process, tiny_job, tiny_scene, unet_checkpoint

STAGES = ["predict", "vectorize", "evaluate"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The tiny scene and a checkpoint for it, made once for the module."""
    folder = tmp_path_factory.mktemp("runs_scene")
    scene, labels = tiny_scene(folder)
    checkpoint = unet_checkpoint(folder / "checkpoint", scene, **TINY_UNET)
    return scene, labels, checkpoint


def make_job(folder: Path, scene, **overrides) -> Path:
    """predict → vectorize → evaluate over the tiny scene, with the module's checkpoint."""
    image, labels, checkpoint = scene
    folder.mkdir(parents=True, exist_ok=True)
    overrides.setdefault("stages", STAGES)
    overrides.setdefault("predict", {"scene": str(image), "batch_size": 4, "checkpoint": str(checkpoint)})
    return tiny_job(folder, image, labels, **overrides)


def run(job: Path, capsys, *extra) -> tuple[int, list[str]]:
    code = main(["run", str(job), *extra])
    captured = capsys.readouterr()
    return code, [line for line in (captured.out + captured.err).splitlines() if line.strip()]


def runs_of(job: Path) -> list[dict]:
    out = Path(yaml.safe_load(job.read_text())["output_dir"])
    return sorted((json.loads(p.read_text()) for p in (out / "runs").glob("*/run.json")), key=lambda r: r["started"])


def mosaic_stamp(out: Path) -> tuple:
    """Changes whenever predict writes the mosaic again (it renames a new folder into place)."""
    mosaic = out / "mosaic.zarr"
    return mosaic.stat().st_ino, mosaic.stat().st_mtime_ns, (mosaic / ".zattrs").stat().st_mtime_ns


def noop_line(run_id: str) -> re.Pattern:
    return re.compile(
        rf"geoseg: job 'tiny' already finished in run {re.escape(run_id)} "
        r"\(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); nothing to do \(--force runs it again\)"
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, scene, ray_local, one_torch_thread):
    """One finished run, shared read-only by the tests that only look at it."""
    job = make_job(tmp_path_factory.mktemp("runs_done"), scene)
    assert main(["run", str(job)]) == 0
    return job


def test_a_run_writes_run_json_with_the_job_code_checkpoint_and_timings(finished, scene):
    job = load_job(finished)
    out = Path(job.output_dir)
    [record] = runs_of(finished)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", record["run_id"])
    assert (out / "runs" / record["run_id"] / "run.json").is_file()
    assert record["status"] == "done" and record["error"] is None and record["force"] is False
    assert record["job"] == {
        "name": "tiny",
        "file": str(finished.resolve()),
        "sha256": hashlib.sha256(job.model_dump_json().encode()).hexdigest(),
    }
    assert record["code"]["geoseg_version"] == geoseg.__version__
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert record["code"]["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert re.fullmatch(r"[0-9a-f]{64}", record["code"]["source_sha256"])
    assert record["stages_requested"] == STAGES and list(record["stages"]) == STAGES
    for name, stage in record["stages"].items():
        assert stage["status"] == "done" and stage["error"] is None, name
        assert record["started"] <= stage["started"] <= stage["ended"] <= record["ended"], name
        assert 0 <= stage["seconds"] <= record["seconds"], name
        assert stage["outputs"] and all(Path(p).exists() for p in stage["outputs"]), name
    assert str(out / "metrics.json") in record["stages"]["evaluate"]["outputs"]
    assert record["seconds"] >= sum(stage["seconds"] for stage in record["stages"].values())
    weights = hashlib.sha256((scene[2] / "model.safetensors").read_bytes()).hexdigest()
    assert record["checkpoint"] == {"path": str(scene[2]), "weights_sha256": weights}
    assert open_mosaic(out / "mosaic.zarr").fingerprint["checkpoint_sha256"] == weights
    stat = scene[0].stat()
    inputs = {entry["role"]: entry for entry in record["inputs"]}
    assert set(inputs) == {"predict.scene", "evaluate.labels"}
    assert inputs["predict.scene"]["path"] == str(scene[0]) and inputs["predict.scene"]["size"] == stat.st_size
    assert inputs["predict.scene"]["mtime"].startswith(
        datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    )
    assert json.loads((out / "runs" / "latest.json").read_text()) == record
    assert not list((out / "runs").rglob("*.partial"))  # written by rename


def test_rerunning_a_finished_job_is_a_noop_that_says_so(finished, capsys, monkeypatch):
    import geoseg.job.run
    import geoseg.stages.predict

    def refuse(*args, **kwargs):
        raise AssertionError("a no-op must not run a stage or start Ray")

    monkeypatch.setattr(geoseg.job.run, "_run_stage", refuse)
    monkeypatch.setattr(geoseg.stages.predict, "ray_session", refuse)
    out = Path(load_job(finished).output_dir)
    before, stamp, latest = runs_of(finished), mosaic_stamp(out), (out / "runs" / "latest.json").read_text()
    code, lines = run(finished, capsys)
    assert code == 0
    assert len(lines) == 1 and noop_line(before[-1]["run_id"]).fullmatch(lines[0]), lines
    assert mosaic_stamp(out) == stamp
    assert runs_of(finished) == before and (out / "runs" / "latest.json").read_text() == latest


def test_a_deleted_report_is_written_again_by_the_noop(finished, capsys, monkeypatch):
    import geoseg.job.run

    def refuse(*args, **kwargs):
        raise AssertionError("a no-op must not run a stage")

    monkeypatch.setattr(geoseg.job.run, "_run_stage", refuse)
    out = Path(load_job(finished).output_dir)
    report = out / "report.html"
    before = report.read_text(encoding="utf-8")
    report.unlink()
    code, lines = run(finished, capsys)
    run_id = runs_of(finished)[-1]["run_id"]
    assert code == 0 and noop_line(run_id).fullmatch(lines[0]), lines
    assert lines[1] == f"geoseg: report → {report} (written again from run {run_id}'s outputs)"
    again = report.read_text(encoding="utf-8")
    assert run_id in again and _tables(before) and _tables(again) == _tables(before)


def _tables(html: str) -> list[str]:
    """The page's number cells (data-key and value), the part that comes from metrics.json."""
    return re.findall(r'data-key="[^"]*"[^>]*data-value="[^"]*"', html)


def test_the_noop_does_not_even_import_ray(finished):
    """The real CLI in a fresh process: one line, exit 0, and Ray never imported (so never started)."""
    code = (
        "import sys; from geoseg.cli import main; code = main(['run', sys.argv[1]]); "
        "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(finished)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "nothing to do (--force runs it again)" in lines[0], result.stdout
    assert lines[1] == "no ray"


def test_an_unfinished_run_changed_code_or_inputs_are_not_noops(finished, scene):
    job = load_job(finished)
    assert finished_run(job, STAGES)[0] is not None
    # other stages, other code, a scene rewritten in place: each is a reason to run again
    assert finished_run(job, ["predict"])[1].startswith("run ")
    assert "code changed" in finished_run(job, STAGES, code={**code_version(), "source_sha256": "0" * 64})[1]
    stat = scene[0].stat()
    try:
        os.utime(scene[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        why = finished_run(job, STAGES)[1]
        assert why == f"input predict.scene changed since run {runs_of(finished)[-1]['run_id']}"
    finally:
        os.utime(scene[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # a run whose driver was killed stays "running": never finished
    path = Path(job.output_dir) / "runs" / runs_of(finished)[-1]["run_id"] / "run.json"
    text = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(text), "status": "running"}))
        assert "did not finish (status running)" in finished_run(job, STAGES)[1]
    finally:
        path.write_text(text)
    assert finished_run(job, STAGES)[0] is not None


def test_force_runs_every_stage_again(tmp_path, scene, ray_local, one_torch_thread, capsys):
    job = make_job(tmp_path, scene)
    assert run(job, capsys)[0] == 0
    out = tmp_path / "out"
    stamp, metrics = mosaic_stamp(out), (out / "metrics.json").stat().st_mtime_ns
    code, lines = run(job, capsys, "--force")
    assert code == 0
    assert not any("nothing to do" in line or "already complete" in line for line in lines), lines
    assert "predict: tiles 9/9" in lines  # every tile predicted again
    first, second = runs_of(job)
    assert second["run_id"] != first["run_id"] and second["force"] is True and second["status"] == "done"
    assert mosaic_stamp(out) != stamp and (out / "metrics.json").stat().st_mtime_ns != metrics
    assert json.loads((out / "runs" / "latest.json").read_text())["run_id"] == second["run_id"]
    code, lines = run(job, capsys)  # and a rerun after the forced one is a no-op again
    assert code == 0 and noop_line(second["run_id"]).fullmatch(lines[-1]), lines


def test_force_really_trains_again(tmp_path, scene, ray_local, one_torch_thread, capsys, monkeypatch):
    import geoseg.stages.train

    calls = []

    def fit(config, *, name, storage, **kwargs):
        calls.append((storage / name).exists())  # Ray Train would resume from a run folder left there
        return fit_in_process(config, **kwargs)

    monkeypatch.setattr(geoseg.stages.train, "fit_model", fit)
    image, labels, _ = scene
    job = tiny_job(
        tmp_path,
        image,
        labels,
        stages=["train"],
        train={
            "scenes": [{"image": str(image), "labels": str(labels)}],
            "tile_size": 64,
            "batch_size": 2,
            "epochs": 1,
            "steps_per_epoch": 2,
        },
    )
    weights = tmp_path / "out" / "checkpoint" / "model.safetensors"
    assert run(job, capsys)[0] == 0 and calls == [False]
    trained = weights.stat().st_mtime_ns
    code, lines = run(job, capsys)
    assert code == 0 and len(lines) == 1 and "nothing to do" in lines[0] and calls == [False]
    card = json.loads((tmp_path / "out" / "checkpoint" / "model_card.json").read_text())
    (tmp_path / "out" / "train" / "ray" / card["run"]).mkdir(parents=True)  # as a real Ray Train run leaves it
    code, lines = run(job, capsys, "--force")
    assert code == 0 and calls == [False, False], lines  # trained, from scratch
    assert not any("already holds" in line for line in lines), lines
    assert weights.stat().st_mtime_ns != trained
    record = runs_of(job)[-1]
    assert record["force"] and record["status"] == "done"
    assert record["checkpoint"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_changed_job_is_not_a_noop(tmp_path, scene, ray_local, one_torch_thread, capsys):
    job = make_job(tmp_path, scene)
    assert run(job, capsys)[0] == 0
    spec = yaml.safe_load(job.read_text())
    spec["vectorize"] = {"min_area_m2": 5.0}
    job.write_text(yaml.safe_dump(spec))
    code, lines = run(job, capsys)
    assert code == 0 and not any("nothing to do (--force" in line for line in lines), lines
    first, second = runs_of(job)
    assert f"geoseg: running again: the job changed since run {first['run_id']}" in lines
    assert second["status"] == "done" and second["job"]["sha256"] != first["job"]["sha256"]
    assert "vectorize: " in "\n".join(lines)  # the polygons were made again with the new setting


@pytest.mark.long  # 15 s on 2 cores: CI's test-long runs it
def test_a_failed_stage_is_recorded_and_the_next_run_is_not_a_noop(
    tmp_path, scene, ray_local, one_torch_thread, capsys, monkeypatch
):
    import geoseg.stages.evaluate

    job = make_job(tmp_path, scene)
    assert run(job, capsys)[0] == 0
    done = runs_of(job)[0]

    def broken(job, **_):
        raise StageError("evaluate: the reference is unreadable\nsecond line")

    monkeypatch.setattr(geoseg.stages.evaluate, "run_evaluate", broken)
    code, lines = run(job, capsys, "--force")
    assert code == 1  # the exit code of the error, as before
    failed = runs_of(job)[-1]
    assert failed["status"] == "failed"
    assert failed["error"] == "evaluate: StageError: evaluate: the reference is unreadable"
    assert failed["stages"]["evaluate"]["status"] == "failed" and failed["stages"]["evaluate"]["ended"]
    assert failed["stages"]["evaluate"]["error"] == "StageError: evaluate: the reference is unreadable"
    assert failed["stages"]["predict"]["status"] == failed["stages"]["vectorize"]["status"] == "done"
    assert json.loads((tmp_path / "out" / "runs" / "latest.json").read_text())["run_id"] == done["run_id"]
    monkeypatch.undo()
    # The last done run's outputs are all still there, but the run after it failed: run again.
    code, lines = run(job, capsys)
    assert code == 0 and not any("nothing to do (--force" in line for line in lines), lines
    assert f"geoseg: running again: the last run {failed['run_id']} did not finish (status failed)" in lines
    assert "predict: " in "\n".join(lines) and runs_of(job)[-1]["status"] == "done"


@pytest.mark.long  # 17 s on 2 cores: CI's test-long runs it
def test_deleting_metrics_makes_the_next_run_not_a_noop(tmp_path, scene, ray_local, one_torch_thread, capsys):
    job = make_job(tmp_path, scene)
    assert run(job, capsys)[0] == 0
    (tmp_path / "out" / "metrics.json").unlink()
    code, lines = run(job, capsys)
    assert code == 0
    assert f"geoseg: running again: metrics.json is gone since run {runs_of(job)[0]['run_id']}" in lines
    assert (tmp_path / "out" / "metrics.json").is_file() and len(runs_of(job)) == 2
    shutil.rmtree(tmp_path / "out" / "mosaic.zarr")  # and a missing mosaic too
    code, lines = run(job, capsys)
    assert code == 0 and any(line.startswith("geoseg: running again: mosaic.zarr") for line in lines), lines
    assert (tmp_path / "out" / "mosaic.zarr").is_dir()
