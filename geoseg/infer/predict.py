"""Predict batches of tiles and write their cores into the mosaic. No Ray inside.

A :class:`TilePredictor` lives in one worker (a Ray actor, or the test
process): it keeps the model, the open scene and the open mosaic, so a batch
of tile *descriptors* goes in and only tile indexes come out; pixels never
travel between processes.

The pixel math (normalization, forward, core crop, argmax, score quantization) runs on the
model's device (:mod:`geoseg.infer.device`): the host reads raw pixels and writes uint8.

It may be called from several threads at once (the Ray actor runs two calls
concurrently): the device's work is serialised by a lock, so while one batch
is on the device the next one is read and the previous one is written. On a
CPU that hides the single-threaded I/O behind the multi-threaded model; on a
GPU it keeps the device fed. Each thread reads
through its own GDAL dataset handle (GDAL handles are not thread-safe);
chunks are still written once each, and a tile's result does not depend on
which batch or thread it went through, so the bytes do not change.

A tile whose read fails (a block damaged after the inputs were checked) stops
the run, or with ``on_read_error="skip"`` has its chunk written invalid, as
outside the data, and comes back as an :class:`~geoseg.io.mosaic.UnreadTile`
saying why, in place of its index.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geoseg.errors import InputRasterError
from geoseg.infer.blend import BlendScratch, blend_tiles
from geoseg.infer.crf import CrfParams
from geoseg.infer.device import CoreOutputs, DevicePixels, forward
from geoseg.io.integrity import gdal_reason
from geoseg.io.mosaic import MosaicInfo, UnreadTile, leave_invalid, mark_done, open_mosaic, write_block
from geoseg.io.raster import ThreadLocalRaster, read_tile, read_valid
from geoseg.models.checkpoint import load_checkpoint
from geoseg.tiling import Tile

__all__ = ["TileBlender", "TilePredictor", "predict_logits", "read_or_skip"]

OnReadError = Literal["stop", "skip"]


def predict_logits(model: torch.nn.Module, batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """Forward a (N, bands, H, W) float32 batch; returns float32 logits on the CPU."""
    return forward(model, torch.from_numpy(batch).to(device), device).cpu()


GDAL_CACHE_MB = 64  # per worker; GDAL reads values below 100000 as megabytes


def read_or_skip(
    src: rasterio.DatasetReader, tile: Tile, bands: tuple[int, ...], on_read_error: OnReadError
) -> tuple[np.ndarray, np.ndarray] | UnreadTile:
    """:func:`~geoseg.io.raster.read_tile`, or where it fails and ``on_read_error`` is skip, why it failed."""
    try:
        return read_tile(src, tile, bands)
    except InputRasterError as error:
        if on_read_error == "stop":
            raise
        # read_tile raises ``from None``: GDAL's error is hidden from tracebacks but kept as the context.
        reason = gdal_reason(error)
        return UnreadTile(str(src.name), tile.index, tile.row, tile.col, tile.height, tile.width, reason)


class TilePredictor:
    """Reads tiles of one scene, runs the model, writes each core once."""

    def __init__(
        self,
        checkpoint: str | Path,
        scene: str | Path,
        mosaic: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        stitch: str = "crop",
        on_read_error: OnReadError = "stop",
        crf: dict | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # Same bytes whatever the batch size or GPU: no autotuned algorithms.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.model, self.card = load_checkpoint(checkpoint, device=self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.bands = tuple(self.card.bands)
        normalization = self.card.normalization
        crf_params = CrfParams(**crf) if crf else None
        self.pixels = DevicePixels(self.model, normalization.mean, normalization.std, self.device, crf=crf_params)
        # GDAL's block cache defaults to 5% of RAM and fills with whatever was read,
        # so a worker's memory would grow with the scene; each tile is read about
        # once, so a small cache (enough for neighbouring halos) loses nothing.
        self._gdal_env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)
        self._gdal_env.__enter__()
        self._scenes = ThreadLocalRaster(scene)
        self._forward_lock = threading.Lock()
        # The mosaic is opened at the first batch, not here: a stage starts its predictors before the
        # mosaic is made, so that the model loads while the driver prepares it.
        self._mosaic_path, self._blend = mosaic, stitch == "blend"
        self._mosaic: MosaicInfo | None = None
        self._scratch: BlendScratch | None = None
        self._open_lock = threading.Lock()
        self.on_read_error: OnReadError = on_read_error

    def _opened(self) -> tuple[MosaicInfo, BlendScratch | None]:
        """The mosaic and (blend mode) its scratch windows, opened by whichever thread needs them first."""
        with self._open_lock:
            if self._mosaic is None:
                self._mosaic = open_mosaic(self._mosaic_path, mode="r+")
                self._scratch = BlendScratch(self._mosaic) if self._blend else None
            return self._mosaic, self._scratch

    @property
    def mosaic(self) -> MosaicInfo:
        return self._opened()[0]

    @property
    def scratch(self) -> BlendScratch | None:
        """Blend mode's scratch windows; None when cropping."""
        return self._opened()[1]

    @property
    def scene(self) -> rasterio.DatasetReader:
        """This thread's handle on the scene (opened on first use)."""
        return self._scenes.get()

    def __call__(self, tiles: list[Tile]) -> list[int | UnreadTile]:
        """Predict ``tiles``; each one's index, or (``on_read_error`` skip) why it was left invalid."""
        read, raw, valids, unread = self._read(tiles)
        if read:
            with self._forward_lock:  # one batch on the device at a time; I/O of other calls overlaps it
                if self.scratch is not None:  # blend mode, first pass: keep whole windows for the blend pass
                    for tile, probs in zip(read, self.pixels.probabilities(raw), strict=True):
                        self.scratch.write(tile, probs)
                    return [tile.index for tile in read] + unread
                outputs = self.pixels.cores(raw, read, scores=self.mosaic.has_scores)
            del raw
            self._write(read, outputs, valids)
        return [tile.index for tile in read] + unread

    def _read(self, tiles: list[Tile]) -> tuple[list[Tile], np.ndarray, list[np.ndarray], list[int | UnreadTile]]:
        """The tiles read, their raw pixels and core validity; the chunks of those that failed left invalid."""
        read: list[Tile] = []
        pixels: list[np.ndarray] = []
        valids = []
        unread: list[int | UnreadTile] = []
        for tile in tiles:
            got = read_or_skip(self.scene, tile, self.bands, self.on_read_error)
            if isinstance(got, UnreadTile):
                leave_invalid(self.mosaic, tile.row, tile.col, tile.height, tile.width)
                unread.append(got)
                continue
            read.append(tile)
            pixels.append(got[0])
            valids.append(got[1])
        raw = np.stack(pixels) if pixels else np.empty((0, len(self.bands), 0, 0), np.uint8)
        return read, raw, valids, unread

    def _write(self, tiles: list[Tile], outputs: CoreOutputs, valids: list[np.ndarray]) -> None:
        """Write each tile's core: labels and scores 0 where the scene has no data."""
        for k, (tile, valid) in enumerate(zip(tiles, valids, strict=True)):
            label = outputs.labels[k]
            label[~valid] = 0
            score = None
            if outputs.scores is not None:
                score = outputs.scores[k]
                score[:, ~valid] = 0
            write_block(self.mosaic, tile.row, tile.col, label, valid.astype(np.uint8), score)
            mark_done(self.mosaic, tile.row, tile.col)  # only after the pixels are on disk

    def close(self) -> None:
        self._scenes.close()
        self._gdal_env.__exit__(None, None, None)


class TileBlender:
    """Blend mode, second pass: no model, just the scene's masks and the scratch windows."""

    def __init__(self, scene: str | Path, mosaic: str | Path):
        self.scene = rasterio.open(scene)
        self.mosaic = open_mosaic(mosaic, mode="r+")
        self.scratch = BlendScratch(self.mosaic)

    def __call__(self, tiles: list[Tile]) -> list[int]:
        valid = [read_valid(self.scene, Window(t.col, t.row, t.width, t.height)) for t in tiles]
        blend_tiles(tiles, self.mosaic, self.scratch, valid)
        return [tile.index for tile in tiles]
