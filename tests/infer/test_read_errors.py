"""Tiles whose read fails, in one worker (no Ray): with skip, the predictor leaves their chunks invalid and the
detector writes them no file, each saying why; with stop, the read error names the file and window.
(Through the CLI, the run record and a rerun after repair: tests/e2e/test_read_error_skip.py.)"""

from __future__ import annotations

import pytest
import rasterio

from geoseg.errors import InputRasterError
from geoseg.infer import TilePredictor
from geoseg.infer.detect import TileDetector, tile_file
from geoseg.io.masks import load_masks
from geoseg.io.mosaic import UNREAD, UnreadTile, done_chunks, open_mosaic
from geoseg.tiling import plan_tiles
from tests.e2e.test_read_error_skip import (
    BLOCK,
    CLASSES,
    CORE,
    MASKRCNN_HALO,
    SIZE,
    UNET_HALO,
    damaged_copy,
    expected_unread,
)
from tests.factories import TINY_UNET, chunk_bytes, scene_mosaic, tiny_scene, unet_checkpoint, write_checkpoint
from tests.factories import write_geotiff as geotiff


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unread")
    source, _ = tiny_scene(folder / "source")
    with rasterio.open(source) as src:
        good = geotiff(folder / "good.tif", src.read(), nodata=0, block=BLOCK)
    bad = folder / "bad.tif"
    damaged_copy(good, bad)
    return folder, good, bad


def unread_entries(tiles, scene, halo: int) -> list[tuple]:
    index = {(t.row, t.col): t.index for t in tiles}
    return [(str(scene), index[rc], *rc, CORE, CORE) for rc in expected_unread(halo)]


def test_predictor_leaves_unreadable_tiles_invalid_and_says_why(scenes):
    folder, good, bad = scenes
    checkpoint = unet_checkpoint(folder / "unet", good, classes=CLASSES, **TINY_UNET)
    tiles = plan_tiles(SIZE, SIZE, tile_size=CORE + 2 * UNET_HALO, halo=UNET_HALO)
    results = {}
    for name, scene, policy in (("good", good, "stop"), ("bad", bad, "skip")):
        scene_mosaic(folder / f"{name}.zarr", scene, CORE, CLASSES)
        predictor = TilePredictor(checkpoint, scene, folder / f"{name}.zarr", threads=1, on_read_error=policy)
        results[name] = [item for start in (0, 4, 8) for item in predictor(tiles[start : start + 4])]
        predictor.close()
    assert results["good"] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    unread = [item for item in results["bad"] if isinstance(item, UnreadTile)]
    assert sorted(i for i in results["bad"] if isinstance(i, int)) == sorted(set(range(9)) - {t.tile for t in unread})
    assert [(t.file, t.tile, t.row, t.col, t.height, t.width) for t in unread] == unread_entries(tiles, bad, UNET_HALO)
    assert all(t.reason.startswith("ZIPDecode:Decoding error at scanline ") for t in unread)

    got, want = open_mosaic(folder / "bad.zarr"), open_mosaic(folder / "good.zarr")
    unread_chunks = {(row // CORE, col // CORE) for row, col in expected_unread(UNET_HALO)}
    assert done_chunks(got, UNREAD) == unread_chunks and len(done_chunks(got)) == 9
    assert {k: v for k, v in chunk_bytes(want.path).items() if k.split("/")[-1] not in {"1.0", "1.1", "2.0"}} == (
        chunk_bytes(got.path)
    )
    assert unread_chunks == {(1, 0), (1, 1), (2, 0)}
    assert not got.valid[:][64:192, 0:64].any() and not got.labels[:][64:128, 64:128].any()

    stopper = TilePredictor(checkpoint, bad, folder / "bad.zarr", threads=1)
    with pytest.raises(
        InputRasterError, match=rf"^{bad}: predict.scene: damaged: cannot read row 48, col 48, 96×96 px"
    ):
        stopper([tiles[4]])
    stopper.close()


def test_detector_writes_no_file_for_unreadable_tiles_and_the_same_files_for_the_others(scenes):
    import torch

    from geoseg.models import build_model

    folder, good, bad = scenes
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet18_fpn", in_channels=3, num_classes=len(CLASSES))
    checkpoint = write_checkpoint(
        folder / "maskrcnn", model, arch="maskrcnn_resnet18_fpn", encoder="resnet18", classes=CLASSES, bands=(1, 2, 3)
    )
    tiles = plan_tiles(SIZE, SIZE, tile_size=CORE + 2 * MASKRCNN_HALO, halo=MASKRCNN_HALO)
    skipped = {index for _, index, *_ in unread_entries(tiles, bad, MASKRCNN_HALO)}
    read = [tile for tile in tiles if tile.index not in skipped]
    assert len(read) == 4
    (folder / "good_tiles").mkdir()
    (folder / "bad_tiles").mkdir()
    detector = TileDetector(checkpoint, good, folder / "good_tiles", threads=1, score_threshold=0.44)
    assert detector([tiles[i] for i in sorted(t.index for t in read)]) == sorted(t.index for t in read)
    detector = TileDetector(
        checkpoint, bad, folder / "bad_tiles", threads=1, score_threshold=0.44, on_read_error="skip"
    )
    results = detector(tiles)
    unread = [item for item in results if isinstance(item, UnreadTile)]
    assert [(t.file, t.tile, t.row, t.col, t.height, t.width) for t in unread] == unread_entries(
        tiles, bad, MASKRCNN_HALO
    )
    for tile in tiles:
        written = tile_file(folder / "bad_tiles", tile.index)
        assert written.exists() == (tile.index not in skipped)
        if written.exists():
            assert written.read_bytes() == tile_file(folder / "good_tiles", tile.index).read_bytes()
    with pytest.raises(InputRasterError, match=rf"^{bad}: predict.scene: damaged: cannot read "):
        TileDetector(checkpoint, bad, folder / "bad_tiles", threads=1)(tiles)
    assert sorted(item for item in results if isinstance(item, int)) == sorted(tile.index for tile in read)
    assert sum(len(load_masks(tile_file(folder / "good_tiles", tile.index))) for tile in read) > 0
