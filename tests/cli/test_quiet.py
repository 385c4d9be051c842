"""A quiet terminal: Ray's own output goes to the run's ``ray.log``, named at the end; ``--verbose`` shows it.

The fast tests stand in for Ray with a module that writes to descriptor 2 as Ray does (its
token-authentication WARNING, a C++ core_worker line), and for the stage with one that starts
that "Ray" through the real ``ray_session``; pytest's ``capfd`` reads the descriptors, so what it
sees is what a terminal would show. The slow test runs the tiny job end to end with the real Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from geoseg.cli import main
from geoseg.errors import StageError
from tests.factories import tiny_job

RAY_WARNING = "WARNING authentication_token_setup.py:85 -- Token authentication is enabled for this Ray cluster."
CORE_WORKER = "E 1202 core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' has constructor arguments"


def fake_ray(monkeypatch) -> None:
    """A ``ray`` whose init and shutdown write to descriptor 2, as the real one's C++ and loggers do."""
    ray = types.ModuleType("ray")
    state = {"up": False}

    def init(address=None, **options):
        state["up"] = True
        os.write(2, f"{RAY_WARNING}\n".encode())

    def shutdown():
        state["up"] = False
        os.write(2, f"{CORE_WORKER}\n".encode())

    ray.is_initialized = lambda: state["up"]  # type: ignore[attr-defined]
    ray.init = init  # type: ignore[attr-defined]
    ray.shutdown = shutdown  # type: ignore[attr-defined]
    data = types.ModuleType("ray.data")
    data.DataContext = types.SimpleNamespace(get_current=types.SimpleNamespace)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.data", data)


def stage_in_ray(monkeypatch, *, fails: bool = False, starts_ray: bool = True) -> None:
    """Every stage: a progress line, inside a Ray session (unless ``starts_ray`` is False), then maybe a failure."""

    def run_stage(stage, job, *, address, log, force):
        from geoseg.runtime import ray_session

        if not starts_ray:
            log(f"{stage}: done without Ray")
            return {}
        with ray_session(address):
            log(f"{stage}: progress 1/1")
            if fails:
                raise StageError(f"{stage}: a model actor was lost")
        return {}

    fake_ray(monkeypatch)
    monkeypatch.setattr("geoseg.job.run._run_stage", run_stage)


def ray_logs(folder: Path) -> list[Path]:
    return sorted((folder / "out" / "runs").glob("*/ray.log"))


def test_a_run_keeps_ray_off_the_terminal_and_names_its_log(tiny, monkeypatch, capfd):
    folder, scene, labels = tiny
    stage_in_ray(monkeypatch)
    assert main(["run", str(tiny_job(folder, scene, labels)), "--stages", "evaluate"]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    [log] = ray_logs(folder)
    assert log.read_text().splitlines() == [RAY_WARNING, CORE_WORKER]
    lines = out.splitlines()
    assert "evaluate: progress 1/1" in lines
    assert lines[-1] == f"geoseg: Ray's own messages (warnings, worker logs) are in {log}; --verbose shows them here"


@pytest.mark.parametrize(
    "command", [["run", "{job}", "--stages", "evaluate", "--verbose"], ["evaluate", "{job}", "--verbose"]]
)
def test_verbose_shows_ray_on_the_terminal_as_it_writes(command, tiny, monkeypatch, capfd):
    folder, scene, labels = tiny
    stage_in_ray(monkeypatch)
    job = tiny_job(folder, scene, labels)
    assert main([part.format(job=job) for part in command]) == 0
    out, err = capfd.readouterr()
    assert err.splitlines() == [RAY_WARNING, CORE_WORKER]
    assert "evaluate: progress 1/1" in out and "ray.log" not in out
    assert ray_logs(folder) == []


def test_a_failed_stage_names_the_log_and_its_error_reaches_the_terminal(tiny, monkeypatch, capfd):
    folder, scene, labels = tiny
    stage_in_ray(monkeypatch, fails=True)
    assert main(["evaluate", str(tiny_job(folder, scene, labels))]) == 1
    out, err = capfd.readouterr()
    [log] = ray_logs(folder)
    assert err.splitlines() == ["geoseg: error: evaluate: a model actor was lost"]
    assert out.splitlines()[-1].startswith(f"geoseg: Ray's own messages (warnings, worker logs) are in {log}")
    assert log.read_text().splitlines() == [RAY_WARNING, CORE_WORKER]


def test_no_log_is_named_when_ray_never_started(tiny, monkeypatch, capfd):
    folder, scene, labels = tiny
    stage_in_ray(monkeypatch, starts_ray=False)
    assert main(["evaluate", str(tiny_job(folder, scene, labels))]) == 0
    out, err = capfd.readouterr()
    assert err == "" and "ray.log" not in out
    assert ray_logs(folder) == []


@pytest.mark.slow
def test_the_tiny_job_end_to_end_prints_no_ray_warning_or_traceback(tiny):
    """The real CLI and the real Ray (Ray Train, actors, band tasks): stderr stays empty, progress shows."""
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels)
    result = subprocess.run(
        [sys.executable, "-m", "geoseg.cli", "run", str(job)], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for noise in ("WARNING", "core_worker", "Traceback"):
        assert noise not in result.stderr, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout.count("train: epoch 2/2") == 1  # a Ray Train worker's own progress line, forwarded once
    assert "pid=" not in result.stdout and "\x1b[" not in result.stdout  # as geoseg wrote it: no Ray prefix
    assert "predict: tiles 9/9" in result.stdout
    [log] = ray_logs(folder)
    if log.stat().st_size:  # Ray's warnings depend on the machine (RAY_AUTH_MODE, another Ray running)
        assert f"are in {log}" in result.stdout.splitlines()[-1]
