"""Damaged rasters are found before a stage reads them, and a read that still fails names its window."""

import itertools
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.errors import InputRasterError
from geoseg.io.integrity import check_raster_blocks, sample_blocks
from geoseg.io.raster import ThreadLocalRaster, read_tile
from geoseg.tiling import Tile
from tests.factories import ORIGIN, UTM33, real_raster, tiny_scene

HINT = "re-download the file, or re-export it from a good copy (e.g. `gdal_translate -of COG good.tif {}`)"


def tile_index(path: Path) -> list[tuple[int, int]]:
    """(offset, byte count) of every tile in IFD 0, read straight from the file.

    Classic little-endian TIFF (TIFF 6.0 section 2: header, IFD entries of 12 bytes);
    TileOffsets is tag 324 and TileByteCounts tag 325 (section 15), SHORT (type 3) or LONG
    (type 4) arrays, stored in the entry itself when they fit in its 4 bytes. Independent of
    GDAL, so the test does not check GDAL's numbers against themselves.
    """
    data = path.read_bytes()
    assert data[:4] == b"II*\x00", "the factory writes classic little-endian TIFF"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    tags = {}
    for i in range(entries):
        entry = ifd + 2 + 12 * i
        tag, kind, count = struct.unpack_from("<HHI", data, entry)
        if tag in (324, 325):
            code, size = {3: ("H", 2), 4: ("I", 4)}[kind]
            at = entry + 8 if count * size <= 4 else struct.unpack_from("<I", data, entry + 8)[0]
            tags[tag] = struct.unpack_from(f"<{count}{code}", data, at)
    return list(zip(tags[324], tags[325], strict=True))


@pytest.fixture
def scene(tmp_path) -> Path:
    """A 192² RGB deflate GeoTIFF in 64-px tiles: 3 × 3 blocks."""
    return tiny_scene(tmp_path / "good")[0]


def damaged(scene: Path, name: str, edit) -> Path:
    out = scene.parent.parent / name
    out.write_bytes(edit(bytearray(scene.read_bytes())))
    return out


def test_whole_files_pass(scene, tmp_path):
    check_raster_blocks(scene, field="predict.scene")
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (3, 150, 130), dtype=np.uint8)
    with rasterio.open(  # striped, band-interleaved, uncompressed
        tmp_path / "strips.tif", "w", driver="GTiff", height=150, width=130, count=3, dtype="uint8",
        crs=UTM33, transform=ORIGIN, interleave="band", blockysize=16,
    ) as dst:  # fmt: skip
        dst.write(image)
    check_raster_blocks(tmp_path / "strips.tif", field="predict.scene")


def test_a_truncated_file_names_the_first_block_past_its_end(scene):
    index = tile_index(scene)
    offset, length = index[4]  # block (row 1, col 1): cut in its middle, so blocks 4..8 run past the end
    cut = damaged(scene, "cut.tif", lambda b: b[: offset + length // 2])
    with pytest.raises(InputRasterError) as error:
        check_raster_blocks(cut, field="predict.scene")
    assert str(error.value) == (
        f"{cut}: predict.scene: damaged: block (row 1, col 1) at byte offset {offset} ({length} bytes) "
        f"runs past the end of the file ({offset + length // 2} bytes), and 4 more block(s) do too; "
        + HINT.format("cut.tif")
    )


def test_a_file_missing_only_its_last_bytes_is_refused(scene):
    offset, length = tile_index(scene)[-1]
    cut = damaged(scene, "short.tif", lambda b: b[: offset + length - 1])
    with pytest.raises(InputRasterError, match=r"block \(row 2, col 2\) at byte offset .* runs past the end"):
        check_raster_blocks(cut, field="train.scenes[0].image")


def test_each_plane_of_a_band_interleaved_file_is_checked(tmp_path):
    image = np.random.default_rng(2).integers(1, 255, (3, 128, 128), dtype=np.uint8)
    with rasterio.open(
        tmp_path / "planes.tif", "w", driver="GTiff", height=128, width=128, count=3, dtype="uint8",
        crs=UTM33, transform=ORIGIN, interleave="band", tiled=True, blockxsize=64, blockysize=64,
        compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(image)
    offset = tile_index(tmp_path / "planes.tif")[-1][0]  # band 3's last tile ends the data
    cut = damaged(tmp_path / "planes.tif", "planes_cut.tif", lambda b: b[: offset + 1])
    with pytest.raises(InputRasterError, match=r"predict\.scene: damaged: band 3 block \(row 1, col 1\) at byte"):
        check_raster_blocks(cut, field="predict.scene")


def corrupt_block(block: int):
    def edit(data: bytearray, scene_index) -> bytearray:
        offset, length = scene_index[block]
        data[offset + length // 4 : offset + length // 4 + 64] = b"\xa5" * 64  # inside the deflate stream
        return data

    return edit


def test_a_corrupted_block_does_not_decode(scene):
    index = tile_index(scene)
    bad = damaged(scene, "bad.tif", lambda b: corrupt_block(5)(b, index))  # block 5: row 1, col 2
    assert bad.stat().st_size == scene.stat().st_size  # the index check alone cannot see it
    with pytest.raises(InputRasterError) as error:
        check_raster_blocks(bad, field="predict.scene")
    message = str(error.value)
    assert message.startswith(f"{bad}: predict.scene: damaged: block (row 1, col 2) does not decode (")
    assert "Decoding error" in message and "\n" not in message  # GDAL's own words, on one line
    assert message.endswith("; " + HINT.format("bad.tif"))


def test_the_sample_spreads_over_the_file_and_ends_on_its_last_block():
    assert sample_blocks(3, 3) == [(r, c) for r in range(3) for c in range(3)]
    picks = sample_blocks(8, 8)  # the 4096² demo scene in 512-px blocks
    assert len(picks) == 16 and picks[0] == (0, 0) and picks[-1] == (7, 7)
    assert all(1 <= (b[0] * 8 + b[1]) - (a[0] * 8 + a[1]) <= 5 for a, b in itertools.pairwise(picks))
    assert sample_blocks(1, 1000)[-1] == (0, 999)


def test_a_real_cog_passes():
    check_raster_blocks(real_raster("cogeo.tif"), field="predict.scene")


# --- a read that fails mid-run -------------------------------------------------------------------------------------


def test_read_tile_names_the_window_it_could_not_read(scene):
    index = tile_index(scene)
    bad = damaged(scene, "bad.tif", lambda b: corrupt_block(4)(b, index))  # block (1, 1): pixels 64..127
    tile = Tile(0, 64, 64, 64, 64, 16, 96)  # core 64..127, read 48..143
    with rasterio.open(bad) as src, pytest.raises(InputRasterError) as error:
        read_tile(src, tile, (1, 2, 3))
    message = str(error.value)
    assert message.startswith(f"{bad}: predict.scene: damaged: cannot read row 48, col 48, 96×96 px (")
    assert message.endswith("; " + HINT.format("bad.tif") + ", then rerun: finished chunks are kept")
    with rasterio.open(bad) as src:  # a tile clear of the damage still reads
        pixels, valid = read_tile(src, Tile(0, 0, 0, 32, 32, 16, 64), (1, 2, 3))
    assert pixels.shape == (3, 64, 64) and valid.shape == (32, 32)


def test_a_scene_gone_after_the_check_is_the_users_error(scene, tmp_path):
    moved = tmp_path / "moved.tif"
    shutil.copy(scene, moved)
    handles = ThreadLocalRaster(moved)
    moved.unlink()
    with pytest.raises(InputRasterError, match=r"moved\.tif: predict\.scene: cannot open it \(.*\); restore the file"):
        handles.get()
