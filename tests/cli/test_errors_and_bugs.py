"""User errors and known failures are one line; bugs, here or inside a Ray worker, show their traceback.

Through the CLI: bad input exits 2 with one line; a known failure while running (a failed
write, a lost actor) exits 1 with one line naming what failed; any other exception, in the
driver or in a Ray actor, exits 1 with its whole traceback (the remote frames included) and a
last line saying it is a bug. The actor pool and the vector writer are reached by standing
them in for the library call behind ``geoseg demo-data`` (the CLI's cheapest command).
"""

import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
from ray import cloudpickle
from shapely.geometry import box

from geoseg.cli import main
from geoseg.errors import InputRasterError, JobConfigError, StageError

# Ray workers cannot import this test module: send its actor classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BUG_LINE = "(this is a bug in geoseg; please report it with the traceback above)"


def run_cli(args, capsys) -> tuple[int, str, list[str]]:
    """Exit code, all of stderr, and stderr's ``geoseg:`` lines (Ray's forwarded worker logs left out)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err, [line for line in err.splitlines() if line.startswith("geoseg:")]


def demo_data_runs(monkeypatch, library_call) -> list[str]:
    """``geoseg demo-data`` arguments whose library call is ``library_call()``."""
    monkeypatch.setattr("geoseg.synthetic.generate_demo", lambda *args, **kwargs: library_call())
    return ["demo-data", "--out", "unused"]


def run_pool(actor_class, **constructor):
    """One batch through one actor of ``actor_class`` (one batch: no second result left unread)."""
    from geoseg.runtime.predict_pool import _run_pool
    from geoseg.tiling import plan_tiles

    tiles = plan_tiles(64, 64, tile_size=96, halo=16)
    return _run_pool(tiles, actor_class, constructor, batch_size=len(tiles), workers=1, cpus=1, gpus=0, progress=None)


class DiskFullActor:
    def __init__(self, folder: str):
        self.folder = folder

    def run(self, tiles):
        raise OSError(28, "No space left on device", f"{self.folder}/mosaic.zarr/labels/0.0")


class DyingActor:
    def run(self, tiles):
        os._exit(1)  # as the OOM killer, or a node going away, would end it


def _tile_weights(tiles):
    return [1 / (len(tiles) - len(tiles)) for _ in tiles]  # the bug: a division by zero


class BuggyActor:
    def run(self, tiles):
        return _tile_weights(tiles)


class BuggyConstructorActor:
    def __init__(self, options: dict):
        self.bands = options["bands"]  # the bug: a key nobody set

    def run(self, tiles):
        return []


class UnreadableSceneActor:
    def __init__(self, scene: str):
        raise InputRasterError(f"{scene}: not found on this node; put it where every node can read it")

    def run(self, tiles):
        return []


# (a) bad input


def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    code, err, lines = run_cli(["validate", tmp_path / "missing.yaml"], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: ") and "missing.yaml" in lines[0], err
    assert "Traceback" not in err


def test_every_problem_of_a_bad_job_is_its_own_line(monkeypatch, capsys):
    def refuse():
        raise JobConfigError(["job.yaml: tiling.halo: must be >= 0 (got -8)", "job.yaml: name: field required"])

    code, err, lines = run_cli(demo_data_runs(monkeypatch, refuse), capsys)
    assert code == 2
    assert lines == [
        "geoseg: error: job.yaml: tiling.halo: must be >= 0 (got -8)",
        "geoseg: error: job.yaml: name: field required",
    ]
    assert "Traceback" not in err


def test_a_geoseg_error_in_an_actor_constructor_is_the_users_error(ray_local, monkeypatch, capsys):
    code, err, lines = run_cli(
        demo_data_runs(monkeypatch, lambda: run_pool(UnreadableSceneActor, scene="s.tif")), capsys
    )
    assert code == 2
    assert lines == ["geoseg: error: s.tif: not found on this node; put it where every node can read it"]
    assert "Traceback" not in err


# (b) known failures while running


def test_a_failed_write_in_an_actor_is_one_line_and_exit_1(ray_local, tmp_path, monkeypatch, capsys):
    code, err, lines = run_cli(
        demo_data_runs(monkeypatch, lambda: run_pool(DiskFullActor, folder=str(tmp_path))), capsys
    )
    assert code == 1
    assert lines == [
        f"geoseg: error: predict: a model actor failed: OSError: [Errno 28] No space left on device: "
        f"'{tmp_path}/mosaic.zarr/labels/0.0'"
    ], err
    assert "Traceback" not in err


def test_a_failed_vector_write_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from geoseg.vectorize.export import write_vectors

    frame = gpd.GeoDataFrame(
        {"class": ["water"], "class_id": [1], "area_m2": [1.0]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:32633"
    )
    (tmp_path / "out").write_text("a file where the output folder should be")
    code, err, lines = run_cli(
        demo_data_runs(monkeypatch, lambda: write_vectors(frame, tmp_path / "out" / "vectors")), capsys
    )
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(
        f"geoseg: error: {tmp_path}/out/vectors: writing the vector outputs failed: "
    ), err
    assert "Traceback" not in err


def test_a_lost_actor_is_one_line_and_exit_1(ray_local, monkeypatch, capsys):
    monkeypatch.setattr("geoseg.runtime.predict_pool.ACTOR_RESTARTS", 0)  # lost at once, not after 3 restarts
    code, err, lines = run_cli(demo_data_runs(monkeypatch, lambda: run_pool(DyingActor)), capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: predict: a model actor was lost: "), err
    assert "Traceback" not in err


def test_known_failures_keep_their_cause_for_geoseg_debug(ray_local, tmp_path):
    with pytest.raises(StageError) as caught:
        run_pool(DiskFullActor, folder=str(tmp_path))
    assert isinstance(caught.value.__cause__.cause, OSError)  # Ray's error, holding the actor's exception


# (c) bugs inside a Ray actor


def test_a_bug_in_an_actor_shows_the_actors_traceback(ray_local, monkeypatch, capsys):
    code, err, lines = run_cli(demo_data_runs(monkeypatch, lambda: run_pool(BuggyActor)), capsys)
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert f'{Path(__file__).name}", line' in err and "in _tile_weights" in err  # the remote frame
    assert "ZeroDivisionError: division by zero" in err
    assert err.rstrip().splitlines()[-1] == f"geoseg: bug: ZeroDivisionError: division by zero {BUG_LINE}"
    assert lines == [f"geoseg: bug: ZeroDivisionError: division by zero {BUG_LINE}"]


def test_a_bug_in_an_actor_constructor_shows_its_traceback(ray_local, monkeypatch, capsys):
    code, err, lines = run_cli(demo_data_runs(monkeypatch, lambda: run_pool(BuggyConstructorActor, options={})), capsys)
    assert code == 1
    assert "in __init__" in err and 'self.bands = options["bands"]' in err
    assert lines == [f"geoseg: bug: KeyError: 'bands' {BUG_LINE}"]


def test_a_bug_in_an_actor_is_not_turned_into_a_stage_error(ray_local):
    with pytest.raises(ZeroDivisionError) as caught:  # Ray's RayTaskError(ZeroDivisionError)
        run_pool(BuggyActor)
    assert not isinstance(caught.value, StageError)
    assert "in _tile_weights" in str(caught.value)


# (d) bugs in the driver


def _plan_scenes():
    return {"train": None}["survey"]


def test_a_bug_in_the_driver_shows_its_traceback(monkeypatch, capsys):
    code, err, lines = run_cli(demo_data_runs(monkeypatch, _plan_scenes), capsys)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "in _plan_scenes" in err
    assert err.rstrip().splitlines()[-1] == f"geoseg: bug: KeyError: 'survey' {BUG_LINE}"
    assert lines == [f"geoseg: bug: KeyError: 'survey' {BUG_LINE}"]


def test_geoseg_debug_lets_bugs_and_errors_through(monkeypatch):
    monkeypatch.setenv("GEOSEG_DEBUG", "1")
    with pytest.raises(KeyError):
        main(demo_data_runs(monkeypatch, _plan_scenes))

    def refuse():
        raise JobConfigError("job.yaml: name: field required")

    with pytest.raises(JobConfigError):
        main(demo_data_runs(monkeypatch, refuse))


def test_the_installed_command_exits_2_for_bad_input_and_1_for_a_bug(tmp_path):
    geoseg = Path(sys.executable).with_name("geoseg")
    bad = subprocess.run([str(geoseg), "validate", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr
    bug = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, geoseg.synthetic\n"
                "def generate_demo(*args, **kwargs):\n"
                "    return {}['survey']\n"
                "geoseg.synthetic.generate_demo = generate_demo\n"
                "from geoseg.cli import main\n"
                "sys.exit(main(['demo-data', '--out', 'unused']))\n"
            ),
        ],
        capture_output=True,
        text=True,
    )
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "in generate_demo" in bug.stderr
    assert bug.stderr.rstrip().splitlines()[-1] == f"geoseg: bug: KeyError: 'survey' {BUG_LINE}"


# Ray Train: what a failed trainer.fit() becomes (the errors built as Ray Train 2.x builds them)


def training_failure(error):
    from geoseg.runtime.train_job import _training_failure

    return _training_failure(error)


def test_a_bug_on_a_training_worker_is_raised_as_itself_with_the_workers_traceback_chained():
    from ray.train import WorkerGroupError

    bug = ZeroDivisionError("division by zero")
    snippet = 'Traceback (most recent call last):\n  File "loop.py", line 9, in train_model\nZeroDivisionError: ...'
    error = WorkerGroupError(f"[Rank 1 Error Snippet]:\n{snippet}", {1: bug})
    raised = training_failure(error)
    assert raised is bug and raised.__cause__ is error and "in train_model" in str(raised.__cause__)
    assert any("rank 1" in note for note in raised.__notes__)


def test_a_geoseg_error_on_a_training_worker_is_raised_as_itself():
    from ray.train import WorkerGroupError

    refused = InputRasterError("scene.tif: cannot read block 3")
    raised = training_failure(WorkerGroupError("...", {0: refused}))
    assert raised is refused and raised.__cause__ is None and raised.__suppress_context__


def test_a_lost_training_worker_is_one_line():
    from ray.exceptions import ActorDiedError
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    lost = WorkerHealthCheckFailedError("A worker health check failed.", failure=ActorDiedError())
    raised = training_failure(WorkerGroupError("...", {0: lost}))
    assert isinstance(raised, StageError) and raised.exit_code == 1
    assert str(raised) == (
        "training failed: worker rank 0 was lost: ActorDiedError: The actor died unexpectedly "
        "before finishing this task."
    )
    raised = training_failure(ControllerError(ActorDiedError()))  # died while the worker group started
    assert str(raised).startswith("training failed: a worker was lost: ActorDiedError: ")


def test_a_failed_write_on_a_training_worker_is_one_line():
    from ray.train import WorkerGroupError

    disk_full = OSError(28, "No space left on device")
    error = WorkerGroupError("...", {0: disk_full})
    raised = training_failure(error)
    assert str(raised) == "training failed: worker rank 0: OSError: [Errno 28] No space left on device"
    assert raised.__cause__ is error


def test_a_bug_wins_over_the_workers_lost_with_it():
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError

    bug = TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")
    raised = training_failure(WorkerGroupError("...", {0: ActorDiedError(), 1: bug}))
    assert raised is bug


def _divide(config):
    return 1 / (config["steps"] - config["steps"])


@pytest.mark.slow
def test_a_bug_in_a_real_ray_train_worker_shows_the_workers_traceback(ray_local, tmp_path, monkeypatch, capsys):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def fit():
        trainer = TorchTrainer(
            _divide,
            train_loop_config={"steps": 3},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="bug", storage_path=str(tmp_path), failure_config=FailureConfig(max_failures=0)),
        )
        try:
            trainer.fit()
        except Exception as error:  # as fit_model does
            raise training_failure(error)  # noqa: B904

    code, err, lines = run_cli(demo_data_runs(monkeypatch, fit), capsys)
    assert code == 1
    assert "in _divide" in err and "ZeroDivisionError: division by zero" in err
    assert lines[-1] == f"geoseg: bug: ZeroDivisionError: division by zero {BUG_LINE}"
