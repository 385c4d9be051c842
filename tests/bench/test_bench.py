"""``geoseg bench predict`` and ``bench train``: the memory sampler and one tiny run each.
(The synthetic bench scene: tests/synthetic/test_blocks.py.)"""

import json
import math
import subprocess
import sys
import time

import psutil
import pytest

from geoseg.bench.measure import MemorySampler
from geoseg.bench.predict import bench_predict
from geoseg.synthetic.blocks import scene_path
from tests.factories import TINY_UNET


def test_memory_sampler_counts_descendants(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", "import time, numpy as np; a = np.ones(200 * 2**20 // 8); time.sleep(30)"]
    )
    try:
        deadline = time.time() + 20
        while psutil.Process(child.pid).memory_info().rss < 150 * 2**20 and time.time() < deadline:
            time.sleep(0.1)
        with MemorySampler(interval=0.05) as memory:
            time.sleep(0.3)
    finally:
        child.kill()
        child.wait()
    assert memory.samples >= 3
    assert memory.peak_driver > 10 * 2**20
    assert memory.peak_total - memory.peak_driver > 150 * 2**20


@pytest.mark.parametrize(("rise", "pss_samples"), [(0.0, 2), (0.5, 1)])
def test_a_small_new_high_reads_pss_again_only_without_a_rise_margin(rise, pss_samples):
    import numpy as np

    sampler = MemorySampler(interval=60, pss_every=1000, rise=rise)
    sampler.sample(full=True)
    grown = np.ones(40 * 2**20 // 8)  # RSS up by 40 MB: a new high, but far under +50% of the process tree
    time.sleep(1.1)  # a new high is read at most once a second
    sampler.sample()
    assert sampler.pss_samples == pss_samples
    assert sampler.samples == 2 and grown.sum() > 0


def test_bench_predict_tiny_run(tmp_path, ray_local):
    size, tile, halo = 256, 128, 32
    lines = []
    result = bench_predict(
        size=size,
        tile_size=tile,
        halo=halo,
        batch_size=4,
        cpus_per_worker=1,
        options=TINY_UNET,
        workdir=tmp_path,
        keep=True,
        log=lines.append,
    )

    assert json.loads(json.dumps(result)) == result  # one JSON line, as `geoseg bench predict` prints it
    assert any("predict: tiles" in line for line in lines)  # progress goes to the log, not the result
    for key in (
        "bench",
        "size",
        "tile",
        "halo",
        "core",
        "tiles",
        "workers",
        "batch_size",
        "device",
        "arch",
        "encoder",
        "end_to_end_s",
        "end_to_end_mpix_s",
        "model_only_mpix_s",
        "model_only_tiles_timed",
        "efficiency",
        "peak_rss_mb",
        "peak_rss_driver_mb",
        "memory_metric",
        "km2_per_h",
        "torch",
        "threads",
    ):
        assert key in result, key
    core = tile - 2 * halo
    assert (result["bench"], result["size"], result["core"], result["device"]) == ("predict", size, core, "cpu")
    assert result["tiles"] == math.ceil(size / core) ** 2 == 16
    assert result["model_only_tiles_timed"] == 16  # few batches: all timed, none scaled
    for key in ("end_to_end_s", "end_to_end_mpix_s", "model_only_mpix_s", "km2_per_h"):
        assert result[key] > 0, key
    assert 0 < result["efficiency"] < 1.5
    # The yardstick is timed on both sides of the stage; its rate lies between the two.
    sides = sorted((result["model_only_before_mpix_s"], result["model_only_after_mpix_s"]))
    assert sides[0] * 0.999 <= result["model_only_mpix_s"] <= sides[1] * 1.001
    assert result["efficiency"] == pytest.approx(result["end_to_end_mpix_s"] / result["model_only_mpix_s"], rel=0.01)
    assert result["end_to_end_mpix_s"] == pytest.approx(size * size / 1e6 / result["end_to_end_s"], rel=0.01)
    assert result["km2_per_h"] == pytest.approx(result["end_to_end_mpix_s"] * 0.25 * 3600, rel=0.01)  # 0.25 m² pixels
    assert result["peak_rss_mb"] > result["peak_rss_driver_mb"] > 0  # Ray's processes are counted
    assert result["memory_metric"] in ("pss", "rss") and result["peak_processes"] > 1
    assert 0 <= result["other_cpu_share"] <= 1 and 0 <= result["model_only_other_cpu_share"] <= 1

    # The scene is kept for the next run (keep=True); the run's checkpoint and mosaic are gone.
    assert scene_path(tmp_path, size).exists()
    assert [p.name for p in tmp_path.iterdir()] == [scene_path(tmp_path, size).name]


@pytest.mark.long
def test_bench_train_tiny_run(tmp_path, ray_local):
    """`geoseg bench train`: the same loop plain and through Ray Train with 1 and 2 workers, one JSON line."""
    from geoseg.bench.train import bench_train

    lines = []
    result = bench_train(
        size=256,
        tile_size=64,
        batch_size=2,
        epochs=2,
        steps=2,
        cpus=2,
        options=TINY_UNET,
        workdir=tmp_path,
        log=lines.append,
    )
    assert json.loads(json.dumps(result)) == result
    for key in ("plain_samples_s", "ray_1_samples_s", "ray_2_samples_s"):
        assert result[key] > 0, key
    assert result["ray_1_efficiency"] == pytest.approx(result["ray_1_samples_s"] / result["plain_samples_s"], rel=0.01)
    assert result["ray_2_vs_plain"] == pytest.approx(result["ray_2_samples_s"] / result["plain_samples_s"], rel=0.01)
    assert sum("train: epoch 2/2" in line for line in lines) == 1  # the plain run logs here; Ray's workers elsewhere
    assert (tmp_path / "checkpoint_1" / "model.safetensors").exists()
    assert (tmp_path / "checkpoint_2" / "model.safetensors").exists()
