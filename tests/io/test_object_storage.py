"""Inputs in object storage: s3:// scenes and labels, served by a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from geoseg.config.locations import RemotePath
from geoseg.io.remote import configure_gdal_for_endpoint
from tests.factories import tiny_job, tiny_scene

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port, a bucket holding the tiny scene and its labels, and the env to reach it."""
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    # Credentials come from the environment only (never from the job file); the server accepts any.
    env = {
        "AWS_ACCESS_KEY_ID": "geoseg-test",
        "AWS_SECRET_ACCESS_KEY": "geoseg-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    folder = tmp_path_factory.mktemp("s3data")
    scene, labels = tiny_scene(folder)
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="surveys")
    client.upload_file(str(scene), "surveys", "tiny/scene.tif")
    client.upload_file(str(labels), "surveys", "tiny/labels.gpkg")
    yield {"env": env, "scene": scene, "labels": labels, "folder": folder}
    server.stop()


def _geoseg(args, env_extra: dict, cwd) -> subprocess.CompletedProcess:
    # A fresh process: its embedded Ray starts after the AWS variables are set, so its workers inherit them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env_extra
    return subprocess.run(
        [sys.executable, "-m", "geoseg.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_endpoint_url_becomes_gdal_settings():
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert configure_gdal_for_endpoint(environ) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    assert (
        configure_gdal_for_endpoint({"AWS_ENDPOINT_URL": "https://s3.example.org", "AWS_S3_ENDPOINT": "other:1"}) == {}
    )  # GDAL's own setting wins
    assert configure_gdal_for_endpoint({}) == {}
    uri = RemotePath("s3://surveys/2026/scene.tif")
    assert (uri.name, uri.suffix, uri.stem, str(uri)) == ("scene.tif", ".tif", "scene", "s3://surveys/2026/scene.tif")


@pytest.mark.long
def test_a_job_reads_its_scenes_and_labels_from_s3(s3, tmp_path):
    uris = {"scenes": [{"image": "s3://surveys/tiny/scene.tif", "labels": "s3://surveys/tiny/labels.gpkg"}]}
    path = tiny_job(tmp_path, s3["scene"], s3["labels"])
    spec = yaml.safe_load(path.read_text())
    spec["train"].update(uris)
    spec["predict"]["scene"] = "s3://surveys/tiny/scene.tif"
    spec["evaluate"]["labels"] = "s3://surveys/tiny/labels.gpkg"
    spec["publish"] = "s3://surveys/results/tiny"
    path.write_text(yaml.safe_dump(spec))
    run = _geoseg(["run", str(path)], s3["env"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "scene.tif 192x192 px" in run.stdout
    assert "published predict outputs to s3://surveys/results/tiny" in run.stdout

    # The same checkpoint on the same scene read from a local file gives the same bytes.
    import zarr

    local = dict(spec, output_dir=str(tmp_path / "local"), stages=["predict"], publish=None)
    local["predict"] = dict(spec["predict"], scene=str(s3["scene"]), checkpoint=str(tmp_path / "out" / "checkpoint"))
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(local))
    assert _geoseg(["run", str(tmp_path / "local.yaml")], {}, tmp_path).returncode == 0
    remote_labels = zarr.open_group(str(tmp_path / "out" / "mosaic.zarr"), mode="r")["labels"][:]
    local_labels = zarr.open_group(str(tmp_path / "local" / "mosaic.zarr"), mode="r")["labels"][:]
    assert np.array_equal(remote_labels, local_labels)

    # Published: every stage's outputs under the prefix, opened in place; the run record, done, last.
    import json

    import s3fs

    fs = s3fs.S3FileSystem(
        endpoint_url=s3["env"]["AWS_ENDPOINT_URL"],
        key=s3["env"]["AWS_ACCESS_KEY_ID"],
        secret=s3["env"]["AWS_SECRET_ACCESS_KEY"],
    )
    keys = {k.removeprefix("surveys/results/tiny/") for k in fs.find("surveys/results/tiny")}
    assert {
        "checkpoint/model.safetensors",
        "mosaic.zarr/.zgroup",
        "mosaic.zarr/labels/.zarray",
        "vectors/polygons.gpkg",
        "vectors/polygons.geojson",
        "metrics.json",
        "runs/latest.json",
    } <= keys
    options = {
        "endpoint_url": s3["env"]["AWS_ENDPOINT_URL"],
        "key": s3["env"]["AWS_ACCESS_KEY_ID"],
        "secret": s3["env"]["AWS_SECRET_ACCESS_KEY"],
    }
    published = zarr.open_group("s3://surveys/results/tiny/mosaic.zarr", mode="r", storage_options=options)
    assert np.array_equal(published["labels"][:], remote_labels)
    latest = json.loads(fs.cat_file("surveys/results/tiny/runs/latest.json"))
    assert latest["status"] == "done" and f"runs/{latest['run_id']}/run.json" in keys


def test_missing_objects_and_missing_credentials_are_one_line_errors(s3, tmp_path):
    path = tiny_job(tmp_path, s3["scene"], s3["labels"])
    spec = yaml.safe_load(path.read_text())
    spec["predict"]["scene"] = "s3://surveys/tiny/nothing.tif"
    path.write_text(yaml.safe_dump(spec))
    run = _geoseg(["validate", str(path)], s3["env"], tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3://surveys/tiny/nothing.tif: predict.scene:" in lines[0], run.stderr

    spec["predict"]["scene"] = "s3://surveys/tiny/scene.tif"
    path.write_text(yaml.safe_dump(spec))
    assert _geoseg(["validate", str(path)], s3["env"], tmp_path).returncode == 0
    wrong = dict(s3["env"], AWS_SECRET_ACCESS_KEY="not-the-secret", AWS_ACCESS_KEY_ID="")
    run = _geoseg(["validate", str(path)], {k: v for k, v in wrong.items() if v}, tmp_path)
    assert run.returncode == 2 and "AWS_* variables" in run.stderr


def test_publish_must_be_an_object_storage_uri(s3, tmp_path, capsys):
    from geoseg.cli import main

    path = tiny_job(tmp_path, s3["scene"], s3["labels"])
    spec = yaml.safe_load(path.read_text())
    spec["publish"] = "/mnt/results"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 2
    assert "publish: must be an s3:// URI" in capsys.readouterr().err


def test_credentials_cannot_be_put_in_a_job_file(s3, tmp_path, capsys):
    from geoseg.cli import main

    path = tiny_job(tmp_path, s3["scene"], s3["labels"])
    spec = yaml.safe_load(path.read_text())
    spec["predict"]["aws_secret_access_key"] = "nope"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 2
    assert "predict.aws_secret_access_key: unknown key" in capsys.readouterr().err
