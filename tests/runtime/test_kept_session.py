"""A job's Ray is started once, by the first stage that needs it, and stopped at the job's end (``ray_kept``)."""

import pytest

from tests.runtime.test_session_output import run_python


@pytest.mark.long  # 35 s on 2 cores: CI's test-long runs it
def test_the_first_stage_starts_ray_the_next_reuse_it_and_the_job_stops_it(tmp_path):
    log = tmp_path / "ray.log"
    result = run_python(
        f"""
        from pathlib import Path
        import ray
        from geoseg.runtime.session import ray_kept, ray_output_to, ray_session

        def node():
            return ray.get_runtime_context().get_node_id()

        with ray_output_to(Path({str(log)!r})), ray_kept():
            assert not ray.is_initialized()  # nothing starts before a stage asks for Ray
            with ray_session():
                first = node()
            assert ray.is_initialized()  # kept between stages
            with ray_session():
                assert node() == first
            with ray_session(dashboard=True):  # a stage that needs the dashboard: started again, with it
                second = node()
            assert second != first
            with ray_session():  # a stage that does not need it uses the one running
                assert node() == second
        assert not ray.is_initialized()
        with ray_session():  # outside a job: a stage's own Ray, stopped with the stage
            third = node()
        assert not ray.is_initialized() and third not in (first, second)
        print("ok")
        """,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]
