"""Ray's own output goes to the run's log file, not the terminal (``ray_output_to`` around ``ray_session``).

Each case runs in a fresh interpreter, whose descriptor 2 is a pipe the test reads: what reaches
it is what a user's terminal would show.
"""

import subprocess
import sys
import textwrap

import pytest


def run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def test_descriptor_2_goes_to_the_log_for_the_session_and_comes_back(tmp_path):
    """Every way a line reaches descriptor 2 inside (Python, C-level writes, child processes) lands in the log."""
    log = tmp_path / "runs" / "r1" / "ray.log"
    result = run_python(
        f"""
        import os, subprocess, sys
        from pathlib import Path
        from geoseg.runtime.session import _stderr_to
        print("before", file=sys.stderr, flush=True)
        with _stderr_to(Path({str(log)!r})):
            print("python line", file=sys.stderr)
            os.write(2, b"E 0101 core_worker.cc:2465: a C++ line\\n")
            subprocess.run(["sh", "-c", "echo child line >&2"], check=True)
            print("progress on stdout", flush=True)
        print("after", file=sys.stderr, flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["before", "after"]
    assert result.stdout.splitlines() == ["progress on stdout"]
    assert log.read_text().splitlines() == ["python line", "E 0101 core_worker.cc:2465: a C++ line", "child line"]


def test_the_log_is_appended_and_restored_when_the_body_raises(tmp_path):
    log = tmp_path / "ray.log"
    log.write_text("first session\n")
    result = run_python(
        f"""
        import os, sys
        from pathlib import Path
        from geoseg.runtime.session import _stderr_to
        try:
            with _stderr_to(Path({str(log)!r})):
                os.write(2, b"second session\\n")
                raise RuntimeError("stage failed")
        except RuntimeError as exc:
            print(f"geoseg: error: {{exc}}", file=sys.stderr)
        """
    )
    assert result.returncode == 0
    assert result.stderr.splitlines() == ["geoseg: error: stage failed"]
    assert log.read_text().splitlines() == ["first session", "second session"]


def test_without_a_log_file_the_terminal_keeps_everything(tmp_path):
    result = run_python(
        """
        import os
        from geoseg.runtime.session import _stderr_to
        with _stderr_to(None):
            os.write(2, b"shown\\n")
        """
    )
    assert result.stderr.splitlines() == ["shown"]


def test_a_real_ray_session_keeps_its_warnings_and_worker_stderr_in_the_log(tmp_path):
    """Real Ray: its start-up warnings and a task's stderr go to the log; the task's stdout still shows."""
    log = tmp_path / "ray.log"
    result = run_python(
        f"""
        import sys
        from pathlib import Path
        import ray
        from geoseg.runtime.session import ray_output_to, ray_session

        @ray.remote(num_cpus=0)
        def task():
            import logging, sys, time, warnings
            print("worker progress line", flush=True)
            print("worker stderr line", file=sys.stderr, flush=True)
            logging.getLogger("ray").warning("worker WARNING line")
            time.sleep(1.5)  # the log monitor forwards worker lines about once a second

        with ray_output_to(Path({str(log)!r})), ray_session():
            ray.get(task.remote())
        print("geoseg: error: shown after the session", file=sys.stderr)
        """,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["geoseg: error: shown after the session"]
    assert "worker progress line" in result.stdout
    text = log.read_text()
    assert "worker stderr line" in text and "worker WARNING line" in text
    assert "worker progress line" not in text


def test_ray_output_to_is_undone_on_the_way_out(tmp_path):
    from geoseg.runtime import session

    with pytest.raises(RuntimeError), session.ray_output_to(tmp_path / "ray.log"):
        assert session._ray_log == tmp_path / "ray.log"
        raise RuntimeError("a stage failed")
    assert session._ray_log is None  # the terminal again (and for --verbose, never anything else)
