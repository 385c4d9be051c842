"""Seams measured per halo predict crop-mode disagreement on other tilings; the chooser keeps to its limits."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from geoseg.infer.seams import (
    _labels,
    _padded,
    activation_bytes_per_pixel,
    choose_tiling,
    core_edge_pixels,
    halos_to_measure,
    max_tile_for_memory,
    measure_edges,
    tiling_figure,
    tiling_figures,
)
from geoseg.models import build_model
from geoseg.models.card import SeamEdge, TilingFigure
from geoseg.tiling import plan_tiles
from tests.factories import TINY_UNET

CPU = torch.device("cpu")
TINY_RADIUS = 72  # measure_halo of TINY_UNET (stride 8): a halo of 72 makes its tiles exact


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("unet", in_channels=3, num_classes=3, encoder="resnet18", **TINY_UNET).eval()


@pytest.fixture(scope="module")
def image():
    """Smooth random 'imagery', normalized: labels change over tens of pixels, as in a scene."""
    noise = np.random.default_rng(0).normal(size=(3, 320, 320))
    return (gaussian_filter(noise, (0, 3, 3)) * 5).astype(np.float32)


def crop_mode_changed_percent(model, image, tile: int, halo: int) -> float:
    """Tile the whole image as prediction does and count labels that differ from whole-image prediction."""
    _, height, width = image.shape
    margin = 2 * tile
    padded = _padded(image, margin, margin, margin, margin)
    whole = _labels(model, padded[None], CPU)[0, margin : margin + height, margin : margin + width]
    tiled = np.empty_like(whole)
    for t in plan_tiles(height, width, tile_size=tile, halo=halo):
        r, c = margin + t.row - halo, margin + t.col - halo
        labels = _labels(model, padded[None, :, r : r + tile, c : c + tile], CPU)[0]
        tiled[t.row : t.row + t.height, t.col : t.col + t.width] = labels[halo : halo + t.height, halo : halo + t.width]
    return float((tiled != whole).mean() * 100)


def test_a_halo_at_the_radius_changes_nothing_and_smaller_ones_change_less_as_they_grow(model, image):
    edges = measure_edges(model, image[:, :96, :], halos=[8, 24, TINY_RADIUS], device=CPU, core=128)
    changed = {edge.halo: edge.changed_px for edge in edges}
    assert changed[TINY_RADIUS] == 0
    assert changed[8] > changed[24] > 0
    assert {edge.edge_px for edge in edges} == {core_edge_pixels(96, 320, 128)}


def test_the_edge_depth_forecasts_tilings_with_other_seams(model, image):
    """Measured with 128-px cores, it forecasts 96- and 160-px cores (seams elsewhere) within a third.

    An estimate: which labels flip depends on what the seams cross, so a few seams sample it coarsely.
    """
    edges = measure_edges(model, image, halos=[8, 16], device=CPU, core=128)
    for edge in edges:
        for core in (96, 160):
            tile = core + 2 * edge.halo
            forecast = tiling_figure(edge, tile, (320, 320)).changed_percent
            direct = crop_mode_changed_percent(model, image, tile, edge.halo)
            assert direct > 0.5
            assert forecast == pytest.approx(direct, rel=0.35), (edge.halo, core, forecast, direct)


@pytest.mark.parametrize(("height", "width", "core"), [(300, 700, 256), (512, 512, 128), (97, 1000, 96), (5, 5, 64)])
def test_core_edge_pixels_counts_every_core_edge_inside_the_scene(height, width, core):
    inside = 0
    for t in plan_tiles(height, width, tile_size=core, halo=0):
        inside += t.width * (1 + (t.row + core <= height)) + t.height * (1 + (t.col + core <= width))
    assert core_edge_pixels(height, width, core) == inside


def test_scene_figures_count_the_tiles_the_tiler_plans():
    edge = SeamEdge(halo=32, changed_px=500, edge_px=10_000)
    for tile, scene in [(512, (4096, 4096)), (1088, (4096, 4096)), (1024, (1000, 3000))]:
        figure = tiling_figure(edge, tile, scene)
        tiles = plan_tiles(*scene, tile_size=tile, halo=32)
        assert figure.cost == pytest.approx(len(tiles) * tile * tile / (scene[0] * scene[1]), abs=1e-4)
        core = tile - 64
        share = 0.05 * core_edge_pixels(*scene, core) / (scene[0] * scene[1])
        assert figure.changed_percent == pytest.approx(100 * share, abs=1e-6)
    large = tiling_figure(edge, 512, None)  # a scene much larger than a tile
    assert large.cost == pytest.approx((512 / 448) ** 2, abs=1e-4)
    assert large.changed_percent == pytest.approx(100 * 4 * 0.05 / 448, abs=1e-6)


def test_figures_keep_to_the_stride_and_a_core_of_twice_the_halo():
    edges = [SeamEdge(halo=32, changed_px=1, edge_px=10), SeamEdge(halo=96, changed_px=0, edge_px=10)]
    figures = tiling_figures(edges, 32, (100, 128, 256, 384, 512))
    pairs = {(f.tile_size, f.halo) for f in figures}
    assert pairs == {(128, 32), (256, 32), (384, 32), (512, 32), (384, 96), (512, 96)}


def test_the_chooser_takes_the_cheapest_under_both_limits():
    figures = [
        TilingFigure(tile_size=512, halo=32, changed_percent=0.06, cost=1.31),
        TilingFigure(tile_size=1088, halo=32, changed_percent=0.03, cost=1.13),
        TilingFigure(tile_size=1152, halo=64, changed_percent=0.004, cost=1.27),
        TilingFigure(tile_size=2176, halo=64, changed_percent=0.002, cost=1.12),
        TilingFigure(tile_size=1600, halo=288, changed_percent=0.0, cost=2.44),
    ]
    assert choose_tiling(figures, max_error_percent=0.01, max_tile=4096).tile_size == 2176
    assert choose_tiling(figures, max_error_percent=0.01, max_tile=2048).tile_size == 1152
    assert choose_tiling(figures, max_error_percent=0.0, max_tile=2048).tile_size == 1600
    assert choose_tiling(figures, max_error_percent=0.1, max_tile=1024).tile_size == 512
    assert choose_tiling(figures, max_error_percent=0.0, max_tile=1024) is None


def test_memory_bounds_the_tile_and_activations_are_measured(model):
    bytes_per_pixel = activation_bytes_per_pixel(model, 3, CPU)
    assert 50 < bytes_per_pixel < 5000
    side = max_tile_for_memory(1.0, 4, bytes_per_pixel)
    assert 4 * side * side * bytes_per_pixel <= 2**30 < 4 * (side + 1) ** 2 * bytes_per_pixel


def test_halos_measured_for_exact_and_other_models():
    assert halos_to_measure(32, 288) == [32, 64, 96, 128, 288]
    assert halos_to_measure(8, 72) == [32, 64, 72]  # ~32 px steps on the stride, whatever the stride
    assert halos_to_measure(8, 688) == [32, 64, 96, 128]  # a radius past twice the cap is not measured
    assert halos_to_measure(32, None) == [32, 64, 96, 128, 192, 256]
    assert halos_to_measure(32, 80) == [32, 64]  # the radius is not on the stride: no exact candidate
