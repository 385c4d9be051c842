import numpy as np
import pytest

from geoseg.tiling import check_tile_size, mirror_indices, plan_tiles


@pytest.mark.parametrize("height,width", [(1000, 700), (448, 448), (449, 1), (5, 3000)])
def test_cores_cover_the_scene_exactly_once_on_chunk_boundaries(height, width):
    tiles = plan_tiles(height, width, tile_size=512, halo=32)
    cover = np.zeros((height, width), np.int32)
    for tile in tiles:
        assert tile.row % 448 == 0 and tile.col % 448 == 0  # one tile per Zarr chunk
        cover[tile.row : tile.row + tile.height, tile.col : tile.col + tile.width] += 1
        assert tile.read_rows == (tile.row - 32, tile.row - 32 + 512)
    assert (cover == 1).all()
    assert [t.index for t in tiles] == list(range(len(tiles)))


@pytest.mark.parametrize("length", [1, 2, 3, 17])
@pytest.mark.parametrize("pad", [0, 1, 5, 40])
def test_mirror_indices_match_numpy_reflect_padding(length, pad):
    values = np.arange(length)
    expected = np.pad(values, pad, mode="reflect" if length > 1 else "edge")
    assert (values[mirror_indices(-pad, length + pad, length)] == expected).all()


def test_tile_size_not_divisible_by_stride_names_sizes_that_work():
    assert check_tile_size(512, 32, "unet") is None
    message = check_tile_size(500, 32, "unet")
    assert "500" in message and "32" in message and "512" in message and "480" in message


def test_tile_round_trips_through_a_plain_dict():
    from geoseg.tiling import Tile

    tile = plan_tiles(900, 900, tile_size=256, halo=16)[5]
    assert Tile.from_row({k: np.int64(v) for k, v in tile.as_row().items()}) == tile


def test_halo_off_the_stride_grid_is_refused_with_a_fix():
    message = check_tile_size(512, 32, "unet", halo=16)
    assert "halo 16" in message and "use halo 32" in message
    assert check_tile_size(512, 32, "unet", halo=64) is None
