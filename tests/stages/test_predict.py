"""The predict stage: blend stitching through the stage leaves no scratch and differs from crop only near seams."""

import numpy as np
import pytest
import yaml
import zarr

from geoseg.infer.blend import SCRATCH
from geoseg.io.mosaic import open_mosaic
from tests.factories import TINY_UNET, chunk_bytes, tiny_scene, unet_checkpoint


def test_blend_mode_runs_through_the_stage_and_leaves_no_scratch(tmp_path, ray_local):
    from geoseg.job import run_job

    scene, _ = tiny_scene(tmp_path)
    checkpoint = unet_checkpoint(tmp_path / "ckpt", scene, **TINY_UNET)
    outputs = {}
    for stitch in ("blend", "crop"):
        job = {
            "name": stitch,
            "output_dir": str(tmp_path / stitch),
            "classes": ["background", "water", "building"],
            "stages": ["predict"],
            "tiling": {"tile_size": 96, "halo": 16, "stitch": stitch},
            "model": {"arch": "unet", "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
            "predict": {"scene": str(scene), "checkpoint": str(checkpoint), "scores": True},
            "runtime": {"workers": 1, "cpus_per_worker": 1},
        }
        path = tmp_path / f"{stitch}.yaml"
        path.write_text(yaml.safe_dump(job))
        summary = run_job(path, log=lambda message: None)
        assert summary["predict"]["tiles"] == 9
        outputs[stitch] = tmp_path / stitch / "mosaic.zarr"
    group = zarr.open_group(str(outputs["blend"]), mode="r")
    assert SCRATCH not in group and np.asarray(group["done"][:]).all()
    blend, crop = open_mosaic(outputs["blend"]), open_mosaic(outputs["crop"])
    assert (blend.valid[:] == 1).all()
    agreement = (blend.labels[:] == crop.labels[:]).mean()
    assert agreement > 0.9  # the same model: blending only changes pixels near seams
    assert chunk_bytes(outputs["blend"]) != chunk_bytes(outputs["crop"])


@pytest.mark.long  # 24 s on 2 cores: CI's test-long runs it
def test_a_dense_crf_refines_each_tile_and_keys_the_mosaic(tmp_path, ray_local):
    from geoseg.job import run_job

    scene, _ = tiny_scene(tmp_path)
    checkpoint = unet_checkpoint(tmp_path / "ckpt", scene, **TINY_UNET)
    labels, lines = {}, []
    for name, crf in (
        ("plain", None),
        ("crf", {"iterations": 2, "window": 3}),
        ("crf", {"iterations": 3, "window": 3}),
    ):
        job = {
            "name": name,
            "output_dir": str(tmp_path / name),
            "classes": ["background", "water", "building"],
            "stages": ["predict"],
            "tiling": {"tile_size": 96, "halo": 16},
            "model": {"arch": "unet", "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
            "predict": {"scene": str(scene), "checkpoint": str(checkpoint), **({"crf": crf} if crf else {})},
            "runtime": {"workers": 1, "cpus_per_worker": 1},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        summary = run_job(path, log=lines.append)
        assert summary["predict"]["tiles"] == 9  # another CRF setting predicts the mosaic again
        mosaic = open_mosaic(tmp_path / name / "mosaic.zarr")
        labels[name] = mosaic.labels[:]
        assert mosaic.group.attrs["geoseg"]["fingerprint"].get("crf", {}).get("iterations") == (crf or {}).get(
            "iterations"
        )
    assert any("dense CRF refines each tile (3 iterations, 3-px window); it reaches 3 px" in line for line in lines)
    assert (labels["plain"] != labels["crf"]).any()


@pytest.mark.long
def test_a_scene_replaced_under_the_same_name_is_predicted_again(tmp_path, ray_local):
    """Same path, size and grid, other pixels: the mosaic of the old file is not taken for the new one's."""
    from geoseg.job import load_job
    from geoseg.stages.predict import run_predict

    scene, _ = tiny_scene(tmp_path / "a", seed=0)
    checkpoint = unet_checkpoint(tmp_path / "ckpt", scene, **TINY_UNET)
    job = {
        "name": "replaced",
        "output_dir": str(tmp_path / "out"),
        "classes": ["background", "water", "building"],
        "stages": ["predict"],
        "tiling": {"tile_size": 96, "halo": 16},
        "model": {"arch": "unet", "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
        "predict": {"scene": str(scene), "checkpoint": str(checkpoint)},
        "runtime": {"workers": 1, "cpus_per_worker": 1},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    first = run_predict(load_job(path), log=lambda message: None)
    assert first["tiles"] == 9
    assert run_predict(load_job(path), log=lambda message: None)["tiles"] == 0  # unchanged: nothing to do
    other, _ = tiny_scene(tmp_path / "b", seed=5)
    other.replace(scene)
    assert run_predict(load_job(path), log=lambda message: None)["tiles"] == 9
