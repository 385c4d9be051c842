"""``geoseg submit``/``status``/``logs`` without a cluster: a bad job is refused before it is submitted, an
unreachable cluster is one line and exit 2. (Through a real cluster: tests/runtime/test_cluster.py.)"""

from geoseg.cli import main
from tests.factories import tiny_job, tiny_scene
from tests.localcluster import free_port


def test_a_bad_job_is_refused_before_it_is_submitted(tmp_path, capsys):
    scene, labels_gpkg = tiny_scene(tmp_path)
    job = tiny_job(tmp_path, scene, labels_gpkg, tiling={"tile_size": 96, "halo": -8})
    port = free_port()  # nothing listens: a job that got as far as submitting would fail on connecting
    assert main(["submit", str(job), "--address", f"http://127.0.0.1:{port}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"geoseg: error: {job}: tiling.halo: must be >= 0 (got -8)"]


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path, capsys):
    scene, labels_gpkg = tiny_scene(tmp_path)
    job = tiny_job(tmp_path, scene, labels_gpkg)
    address = f"http://127.0.0.1:{free_port()}"
    for args in (["submit", str(job)], ["status", "raysubmit_x"], ["logs", "raysubmit_x", "--follow"]):
        assert main([*args, "--address", address]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"geoseg: error: {address}: cannot connect"), err
