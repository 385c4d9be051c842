"""Blend stitching: Hann weights checked by hand, and the stage end to end."""

import numpy as np
import yaml
import zarr

from conftest import tiny_scene
from geoseg.infer.blend import SCRATCH, BlendScratch, hann_window
from geoseg.infer import TileBlender
from geoseg.io.mosaic import create_mosaic, open_mosaic
from geoseg.io.raster import inspect_scene
from geoseg.tiling import plan_tiles
from test_resume_determinism import chunk_bytes, random_checkpoint


def test_hann_window_is_positive_symmetric_and_peaks_in_the_middle():
    w = hann_window(64)
    assert w.min() > 0 and np.allclose(w, w[::-1]) and np.allclose(w, w.T)
    assert w[32, 32] == w.max()


def test_two_windows_blend_by_their_hann_weights(tmp_path, make_geotiff):
    core, halo = 32, 8
    size = core + 2 * halo
    path = make_geotiff("s.tif", np.full((3, core, 2 * core), 7, np.uint8))
    scene = inspect_scene(path)
    mosaic = create_mosaic(tmp_path / "m.zarr", height=core, width=2 * core, chunk=core, crs=scene.crs,
                           transform=scene.transform, class_names=["a", "b"], scores=True)
    tiles = plan_tiles(core, 2 * core, tile_size=size, halo=halo)
    BlendScratch.create(mosaic, len(tiles), 2, size)
    scratch = BlendScratch(mosaic)
    scratch.write(tiles[0], np.stack([np.ones((size, size)), np.zeros((size, size))]))  # left tile says "a"
    scratch.write(tiles[1], np.stack([np.zeros((size, size)), np.ones((size, size))]))  # right tile says "b"
    TileBlender(path, tmp_path / "m.zarr")(tiles)

    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    x = np.arange(2 * core)
    left = np.where((x >= -halo) & (x < core + halo), ramp[np.clip(x + halo, 0, size - 1)], 0)
    right = np.where(x >= core - halo, ramp[np.clip(x - core + halo, 0, size - 1)], 0)
    expected_b = right / (left + right)
    result = open_mosaic(tmp_path / "m.zarr")
    scores_b = result.group["scores"][1, 0, :].astype(float) / 255
    assert np.allclose(scores_b, expected_b, atol=1 / 255)
    assert (expected_b[:core - halo] == 0).all() and (expected_b[core + halo:] == 1).all()  # blend only near the seam
    assert 0 < expected_b[core - 1] < 0.5 < expected_b[core] < 1  # equal weights meet at the seam
    assert (result.labels[0, :] == (expected_b > 0.5)).all()


def test_blend_mode_runs_through_the_stage_and_leaves_no_scratch(tmp_path, ray_local):
    from geoseg.job import run_job

    scene, labels = tiny_scene(tmp_path)
    checkpoint = random_checkpoint(tmp_path / "ckpt", scene, encoder_depth=3, decoder_channels=[32, 16, 8])
    outputs = {}
    for stitch in ("blend", "crop"):
        job = {"name": stitch, "output_dir": str(tmp_path / stitch), "classes": ["background", "water", "building"],
               "stages": ["predict"], "tiling": {"tile_size": 96, "halo": 16, "stitch": stitch},
               "model": {"arch": "unet", "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
               "predict": {"scene": str(scene), "checkpoint": str(checkpoint), "scores": True},
               "runtime": {"workers": 1, "cpus_per_worker": 1}}
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
