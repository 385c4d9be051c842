"""`tiling: auto` at prediction: the card's seams choose, for this scene, within the job's limits; or say why not."""

import pytest
import yaml

from geoseg.config import Job
from geoseg.errors import JobConfigError
from geoseg.infer.seams import core_edge_pixels, tiling_figures
from geoseg.job import load_job
from geoseg.job.preflight import check_job_inputs
from geoseg.models.card import SeamCheck, SeamEdge
from geoseg.stages.tiling_choice import chosen_tiling, measured_seams
from tests.factories import TINY_UNET, model_card, tiny_scene, unet_checkpoint

# Edge depths like the demo model's: 0.07 px changed per px of core edge at halo 32, 0.004 at 64, none at 288.
EDGES = (
    SeamEdge(halo=32, changed_px=700, edge_px=10_000),
    SeamEdge(halo=64, changed_px=40, edge_px=10_000),
    SeamEdge(halo=288, changed_px=0, edge_px=10_000),
)


def card(bytes_per_pixel=1000.0, edges=EDGES):
    seams = SeamCheck(
        region="train.scenes[0] validation strip, 2048 x 461 px at column 0, row 2611",
        stride=32,
        pixels=2048 * 461,
        edges=edges,
        tilings=tuple(tiling_figures(edges, 32)),
        activation_bytes_per_pixel=bytes_per_pixel,
    )
    return model_card(arch="unet", encoder="resnet18", classes=("background", "water"), bands=(1, 2, 3), seams=seams)


def job(tmp_path, tiling, batch_size=1) -> Job:
    data = {
        "name": "auto",
        "output_dir": str(tmp_path / "out"),
        "classes": ["background", "water"],
        "stages": ["predict"],
        "tiling": tiling,
        "predict": {"scene": str(tmp_path / "scene.tif"), "batch_size": batch_size},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_job(path)


def cost(tile, halo, scene):
    core = tile - 2 * halo
    return -(-scene[0] // core) * -(-scene[1] // core) * tile * tile / (scene[0] * scene[1])


def test_the_cheapest_tiling_on_this_scene_under_the_error_and_memory_limits(tmp_path):
    lines = []
    scene = (4096, 4096)
    chosen = chosen_tiling(job(tmp_path, "auto"), card(), tmp_path / "ckpt", scene, lines.append)
    tile, halo = chosen.tiling.tile_size, chosen.tiling.halo
    core = tile - 2 * halo
    assert tile * tile * 1000.0 <= 4 * 2**30 and tile % 32 == 0 and halo in (32, 64, 288)
    share = {32: 0.07, 64: 0.004, 288: 0.0}[halo] * core_edge_pixels(*scene, core) / (4096 * 4096)
    assert 100 * share <= 0.01
    # No tiling on the stride that fits the limits is cheaper on this scene, whatever its halo.
    for other_halo, depth in ((32, 0.07), (64, 0.004), (288, 0.0)):
        for other in range(128, 2049, 32):
            other_core = other - 2 * other_halo
            if other_core < 2 * other_halo or other * other * 1000.0 > 4 * 2**30:
                continue
            if 100 * depth * core_edge_pixels(*scene, other_core) / (4096 * 4096) <= 0.01:
                assert cost(other, other_halo, scene) >= cost(tile, halo, scene) - 1e-4
    assert cost(tile, halo, scene) < cost(512, 32, scene)  # cheaper than 512/32, and more exact
    assert len(lines) == 1 and lines[0].startswith(f"predict: tiling auto: tile {tile} / halo {halo} (")
    assert chosen.tiling.core == core


def test_a_tighter_memory_or_a_larger_batch_chooses_smaller_tiles(tmp_path):
    scene = (10_000, 10_000)
    roomy = chosen_tiling(job(tmp_path, "auto"), card(), tmp_path, scene, lambda _: None).tiling
    tight = job(tmp_path, {"tile_size": "auto", "max_tile_memory_gb": 0.5}, batch_size=2)
    small = chosen_tiling(tight, card(), tmp_path, scene, lambda _: None).tiling
    assert small.size < roomy.size and 2 * small.size**2 * 1000.0 <= 0.5 * 2**30


def test_without_seams_or_without_a_fitting_tiling_it_says_what_to_change(tmp_path):
    plain = model_card(arch="unet", encoder="resnet18", classes=("background", "water"), bands=(1, 2, 3))
    with pytest.raises(JobConfigError, match=r"has none; retrain it, or give tiling.tile_size and tiling.halo"):
        chosen_tiling(job(tmp_path, "auto"), plain, tmp_path / "ckpt", (4096, 4096), print)
    strict = job(tmp_path, {"tile_size": "auto", "max_seam_error": 0.0, "max_tile_memory_gb": 0.25})
    with pytest.raises(JobConfigError) as info:
        chosen_tiling(strict, card(), tmp_path / "ckpt", (4096, 4096), print)
    message = str(info.value)
    assert message.startswith("tiling.max_seam_error: no tiling of the model in")
    assert "under 0% of labels with tiles up to 518 px (batch 1 in max_tile_memory_gb 0.25)" in message
    assert "the most exact that fits is tile 512 / halo 64" in message and "\n" not in message


def test_a_given_tiling_is_kept_and_its_measured_seams_reported(tmp_path):
    given = job(tmp_path, {"tile_size": 512, "halo": 32})
    assert chosen_tiling(given, card(), tmp_path, (4096, 4096), print) is given
    line = measured_seams(card(), 512, 32, (4096, 4096))
    # Cores of 448: 10 core rows, 9 of them closed inside the scene: 19 edges of 4096 px each way, 0.07 px deep.
    changed = 100 * 0.07 * 2 * 19 * 4096 / 4096**2
    tiles = 10 * 10 * 512**2 / 4096**2
    assert f"{changed:.4f}" == "0.0649" and f"{tiles:.2f}" == "1.56"
    assert line.startswith("predict: seams: tile 512 / halo 32 (0.0649% changed, 1.56x pixels) on this scene")
    assert measured_seams(card(), 512, 16, (4096, 4096)) is None  # a halo not measured: nothing to say


def test_validate_names_a_checkpoint_without_seams(tmp_path):
    scene, _ = tiny_scene(tmp_path)
    checkpoint = unet_checkpoint(tmp_path / "ckpt", scene, classes=("background", "water"), **TINY_UNET)
    data = {
        "name": "auto",
        "output_dir": str(tmp_path / "out"),
        "classes": ["background", "water"],
        "stages": ["predict"],
        "model": {"arch": "unet", "options": TINY_UNET},
        "tiling": "auto",
        "predict": {"scene": str(scene), "checkpoint": str(checkpoint)},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    problems = check_job_inputs(load_job(path), ["predict"], str(path))
    assert problems == [
        f"{path}: tiling: auto chooses by the seams the train stage measures, and the model in {checkpoint} has "
        "none (trained by an older geoseg, or without a validation strip); retrain it, or give tiling.tile_size "
        "and tiling.halo"
    ]
