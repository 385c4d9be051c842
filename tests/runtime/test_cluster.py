"""A real two-node Ray cluster on 127.0.0.1: the same mosaic as the single-node run, through lost
workers, a lost node and a killed driver; jobs submitted through Ray's Jobs API.

The model is trained once on the cluster (Ray Train, two workers); every run then predicts the
same 640x640 scene (100 tiles) with that checkpoint, with two model actors of one CPU each, one
per node, and must give byte for byte the labels of the embedded single-node run. Every test here
is marked ``cluster``: deselected by default, run by ``make test-cluster`` (about 3 minutes on 2 cores,
most of it Ray starting processes and, for the lost node, the cluster noticing it is gone).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from tests.factories import tiny_job, tiny_scene
from tests.localcluster import LocalCluster, free_port

TILES = 100  # the 640x640 survey scene in 64-pixel cores
ACTOR = "ray::_PredictActor"


def geoseg(*args, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "geoseg.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, output[-6000:]
    return output


def labels(out_dir: Path) -> bytes:
    """The mosaic's class labels, read with zarr."""
    array = zarr.open_group(str(out_dir / "mosaic.zarr"), mode="r")["labels"]
    assert array.shape == (640, 640)
    return np.asarray(array[:]).tobytes()


def done_chunks(out_dir: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(out_dir / "mosaic.zarr.partial"), mode="r")["done"][:]).sum())
    except Exception:  # not created yet, or being created
        return 0


def wait_for_chunks(
    process: subprocess.Popen, out_dir: Path, at_least: int, timeout: float = 180, also=lambda: True
) -> int:
    """Wait until ``at_least`` chunks are written (and ``also()`` holds) while ``process`` still runs."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        done = done_chunks(out_dir)
        if done >= at_least and also():
            return done
        time.sleep(0.1)
    output = process.communicate()[0] if process.poll() is not None else ""
    pytest.fail(f"the run ended or stalled before {at_least} chunks were written:\n{output[-4000:]}")


def embedded_env() -> dict:
    """A plain environment: `geoseg run` without an address starts its own embedded Ray."""
    return {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}


@dataclass
class Work:
    folder: Path
    train_job: Path  # train + predict, output_dir folder/out (trained once by the fixture)
    reference: bytes  # labels of the embedded single-node prediction
    cluster: LocalCluster

    def job_data(self, name: str) -> dict:
        """A predict-only job with the trained checkpoint, writing to its own folder."""
        job = yaml.safe_load(self.train_job.read_text())
        job.update(stages=["predict"], output_dir=str(self.folder / name))
        job["predict"]["checkpoint"] = str(self.folder / "out" / "checkpoint")
        return job

    def predict_job(self, name: str) -> tuple[Path, Path]:
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.job_data(name)))
        return path, self.folder / name

    def new_actors(self, before: set[str]) -> list[dict]:
        return [a for a in self.cluster.actors("_PredictActor") if a["actor_id"] not in before]

    def actor_ids(self) -> set[str]:
        return {a["actor_id"] for a in self.cluster.actors("_PredictActor")}


@pytest.fixture(scope="module")
def work(tmp_path_factory, local_cluster) -> Work:
    local_cluster.ready()
    folder = tmp_path_factory.mktemp("cluster")
    scene, labels_gpkg = tiny_scene(folder)
    survey, _ = tiny_scene(folder / "survey", size=640, seed=1)
    train_job = tiny_job(
        folder,
        scene,
        labels_gpkg,
        stages=["train", "predict"],
        runtime={"workers": 2, "cpus_per_worker": 1},
        predict={"scene": str(survey), "batch_size": 1},
    )
    output = finish(
        geoseg("run", train_job, "--stages", "train", "--address", local_cluster.address, env=local_cluster.env())
    )
    assert "train: done" in output
    result = Work(folder, train_job, b"", local_cluster)
    reference_job, reference_out = result.predict_job("reference")
    finish(geoseg("run", reference_job, env=embedded_env()))
    result.reference = labels(reference_out)
    assert len(set(result.reference)) > 1  # the model tells classes apart: a real comparison
    return result


@pytest.mark.cluster
def test_a_job_across_both_nodes_gives_the_single_node_mosaic(work, local_cluster):
    job, out = work.predict_job("a")
    before = work.actor_ids()
    output = finish(geoseg("run", job, "--address", local_cluster.address, env=local_cluster.env()))
    assert f"predict: {TILES} tiles" in output
    assert labels(out) == work.reference
    actors = work.new_actors(before)
    assert len(actors) == 2
    assert {a["node_id"] for a in actors} == {local_cluster.ids["head"], local_cluster.ids["second"]}
    # Vectorize and evaluate as Ray tasks on the cluster: the polygons one process writes.
    from geoseg.vectorize import vectorize_mosaic

    for stage in ("vectorize", "evaluate"):
        finish(geoseg(stage, job, "--address", local_cluster.address, env=local_cluster.env()))
    here = vectorize_mosaic(out / "mosaic.zarr", work.folder / "a-here")
    assert (out / "vectors" / "polygons.geojson").read_bytes() == here.geojson.read_bytes()
    assert (out / "metrics.json").exists()


@pytest.mark.cluster
def test_a_killed_model_actor_is_restarted_and_the_mosaic_is_identical(work, local_cluster):
    job, out = work.predict_job("b")
    before = work.actor_ids()
    run = geoseg("run", job, "--address", local_cluster.address, env=local_cluster.env())
    busy = []

    def an_actor_is_predicting() -> bool:  # past its constructor: its title is no longer ...__init__
        busy[:] = [pid for pid, _, title in local_cluster.worker_processes(ACTOR) if not title.endswith("__init__")]
        return bool(busy)

    wait_for_chunks(run, out, 10, also=an_actor_is_predicting)
    os.kill(busy[0], signal.SIGKILL)  # the actor's worker process, mid-batch, no cleanup
    assert done_chunks(out) < TILES
    finish(run)
    assert labels(out) == work.reference
    restarted = [a for a in work.new_actors(before) if a["num_restarts"] >= 1]
    assert len(restarted) == 1, work.new_actors(before)


@pytest.mark.cluster
def test_a_killed_driver_resumes_reusing_the_checkpoint_and_the_written_chunks(work, local_cluster):
    out = work.folder / "out"
    victim = geoseg("run", work.train_job, "--address", local_cluster.address, env=local_cluster.env())
    done = wait_for_chunks(victim, out, 20)
    os.kill(victim.pid, signal.SIGKILL)  # the driver only; its actors on the cluster die with their owner
    victim.wait()
    assert not (out / "mosaic.zarr").exists()  # nothing looks complete

    output = finish(geoseg("run", work.train_job, "--address", local_cluster.address, env=local_cluster.env()))
    assert "nothing to do" in output.split("predict:")[0]  # the training checkpoint is reused
    skipped = re.search(r"resuming: skipped (\d+) of (\d+) chunks", output)
    assert skipped, output[-4000:]
    assert done <= int(skipped[1]) < int(skipped[2]) == TILES
    assert labels(out) == work.reference


@pytest.mark.cluster
def test_submit_status_and_logs_through_the_jobs_api(work, local_cluster):
    # RAY_ADDRESS, as exported for `geoseg run`, names no cluster here: --address must win over it
    env, address = local_cluster.env(RAY_ADDRESS=f"127.0.0.1:{free_port()}"), local_cluster.dashboard
    folder = work.folder / "e"
    folder.mkdir()
    job = work.job_data("e")
    # the tiny job, with paths relative to the job file: the shipped copy must name the same files on the cluster
    job.update(output_dir="out")
    job["predict"].update(scene="../scene.tif", checkpoint="../out/checkpoint")
    job["train"]["scenes"] = [{"image": "../scene.tif", "labels": "../labels.gpkg"}]
    job["evaluate"]["labels"] = "../labels.gpkg"
    (folder / "job.yaml").write_text(yaml.safe_dump(job))

    submit = subprocess.run(
        [sys.executable, "-m", "geoseg.cli", "submit", folder / "job.yaml", "--address", address],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stderr
    submission = submit.stdout.strip()
    assert submission and "\n" not in submission, submit.stdout
    deadline, status = time.time() + 240, ""
    while time.time() < deadline:
        status = finish(geoseg("status", submission, "--address", address, env=env), timeout=60)
        if "SUCCEEDED" in status or "FAILED" in status or "STOPPED" in status:
            break
        time.sleep(1)
    logs = finish(geoseg("logs", submission, "--address", address, env=env), timeout=60)
    assert status.startswith(f"{submission}: SUCCEEDED"), status + logs[-4000:]
    assert "geoseg: job 'tiny' finished" in logs and "predict: 9 tiles" in logs
    assert zarr.open_group(str(folder / "out" / "mosaic.zarr"), mode="r")["labels"].shape == (192, 192)
    followed = finish(geoseg("logs", submission, "--address", address, "--follow", env=env), timeout=60)
    assert "geoseg: job 'tiny' finished" in followed  # a finished job's stream: all of it, then exit 0

    for args in (["status", "raysubmit_nosuchjob"], ["logs", "raysubmit_nosuchjob"]):
        unknown = subprocess.run(
            [sys.executable, "-m", "geoseg.cli", *args, "--address", address],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert unknown.returncode == 2
        assert unknown.stderr.strip().splitlines() == [
            f"geoseg: error: {address}: no job 'raysubmit_nosuchjob' on this cluster; "
            f"`ray job list --address {address}` lists them"
        ]


@pytest.mark.cluster
def test_losing_the_second_node_mid_predict_finishes_on_the_head(work, local_cluster):
    job, out = work.predict_job("c")
    before = work.actor_ids()
    run = geoseg("run", job, "--address", local_cluster.address, env=local_cluster.env())
    try:
        # the pool hands each actor its batches at once, so the second node's actor holds some from the start
        wait_for_chunks(
            run, out, 10, also=lambda: any(node == "second" for _, node, _ in local_cluster.worker_processes(ACTOR))
        )
        local_cluster.stop_node(local_cluster.second)  # the whole node at once: raylet, its workers, all
        assert done_chunks(out) < TILES
        output = finish(run)
    finally:
        local_cluster.restart_second()  # for whatever uses the cluster next (ready() waits for it)
    assert f"predict: {TILES} tiles" in output
    assert labels(out) == work.reference
    actors = work.new_actors(before)
    moved = [a for a in actors if a["num_restarts"] >= 1]
    assert len(moved) == 1, actors
    assert moved[0]["node_id"] == local_cluster.ids["head"]  # restarted where resources were left
