"""Shared fixtures: a GeoTIFF maker, a shared Ray, a real local cluster, the RGBN scene, one torch thread.

Plain factories (scenes, jobs, checkpoints, training configs) are in ``tests/factories.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.factories import tiny_scene, write_geotiff

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture
def make_geotiff(tmp_path):
    def make(name: str, array: np.ndarray, **kwargs):
        return write_geotiff(tmp_path / name, array, **kwargs)

    return make


@pytest.fixture
def tiny(tmp_path):
    """(folder, scene, labels): the tiny labelled scene in this test's own folder."""
    scene, labels = tiny_scene(tmp_path)
    return tmp_path, scene, labels


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for every test that needs it (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def local_cluster():
    """A real two-node Ray cluster on 127.0.0.1 (``ray start`` processes; see tests/localcluster.py).

    Its clients run with ``local_cluster.env()`` (the cluster's token). A test that stops a node
    restarts it (``restart_second``); ``local_cluster.ready()`` waits until both nodes are up.
    """
    from tests.localcluster import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small convolutions gain nothing from threads, and spinning threads on shared cores cost a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def rgbn(tmp_path_factory):
    """A 256 px RGBN uint16 scene with a nodata collar, and its labels (read-only: made once per session)."""
    from geoseg.synthetic import make_rgbn_scene

    return make_rgbn_scene(tmp_path_factory.mktemp("rgbn"), size=256, seed=1)
