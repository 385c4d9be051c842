"""Mask R-CNN on tiles: detections as :class:`InstanceMask` in scene pixels. No Ray inside.

A :class:`TileDetector` lives in one worker, like :class:`~geoseg.infer.TilePredictor`:
batches of tile descriptors go in, and each tile's detections are written to
their own ``.npz`` (see :func:`~geoseg.io.masks.save_masks`) under the
detections folder. Only tile indexes travel back; the cross-tile merge reads
the files. A tile's file appears only once complete, so a rerun skips the
tiles already detected.

A tile is read as core + halo, mirror-padded outside the scene like every
geoseg tile; detections are clipped to the scene (what the model found in the
mirrored margin is not there). A detection whose mask reaches the window's
edge *inside the scene* is marked ``cut``: the tile saw only part of it.

A tile whose read fails stops the run, or with ``on_read_error="skip"`` gets
no file and comes back as an :class:`~geoseg.io.mosaic.UnreadTile` in place of
its index: the stage leaves its core invalid, and a rerun detects it again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geoseg.infer.predict import OnReadError, read_or_skip
from geoseg.io.masks import InstanceMask, save_masks, tight
from geoseg.io.mosaic import UnreadTile
from geoseg.io.normalization import normalize
from geoseg.io.raster import ThreadLocalRaster, read_valid
from geoseg.models.checkpoint import load_checkpoint
from geoseg.tiling import Tile

__all__ = ["CUT_MARGIN", "TileDetector", "detections_to_masks", "run_detector", "tile_file"]

CUT_MARGIN = 2  # pixels from an inner window edge within which a mask counts as cut by it


def tile_file(folder: str | Path, index: int) -> Path:
    return Path(folder) / f"tile_{index:06d}.npz"


def run_detector(model: torch.nn.Module, batch: np.ndarray, device: torch.device) -> list[dict]:
    """Forward a (N, bands, H, W) float32 batch; returns torchvision's detection dicts, on the CPU."""
    with torch.inference_mode():
        images = list(torch.from_numpy(batch).to(device))
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                outputs = model(images)
        else:
            outputs = model(images)
    return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()} for out in outputs]


def detections_to_masks(
    output: dict,
    *,
    row_off: int,
    col_off: int,
    window: tuple[int, int, int, int],
    scene_shape: tuple[int, int],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_area: int = 16,
    tile: int = -1,
    valid: np.ndarray | None = None,
) -> list[InstanceMask]:
    """Turn one image's Mask R-CNN output into instances in scene pixels.

    Args:
        output: ``boxes``, ``labels``, ``scores``, ``masks`` (N, 1, H, W) for one input image.
        row_off: scene row of the input's top-left corner (negative in a mirrored margin).
        col_off: scene column of the input's top-left corner (negative in a mirrored margin).
        window: ``(row0, col0, row1, col1)`` of the input in scene pixels (before clipping).
        scene_shape: ``(height, width)`` of the scene; masks are clipped to it.
        score_threshold: detections scoring below this are dropped.
        mask_threshold: a pixel belongs to a detection's mask where its mask probability exceeds this.
        min_area: detections with fewer mask pixels (inside the scene) are dropped.
        tile: the tile index recorded on each instance.
        valid: optional boolean (H, W) of the input: False where the scene has no data.
    """
    height, width = scene_shape
    r0, c0 = max(window[0], 0), max(window[1], 0)
    r1, c1 = min(window[2], height), min(window[3], width)
    seen = (r0, c0, r1, c1)
    # Edges of the window that lie inside the scene: touching one means the object may go on beyond it.
    inner = (window[0] > 0, window[1] > 0, window[2] < height, window[3] < width)
    out = []
    keep = output["scores"] >= score_threshold
    for score, label, prob in zip(
        output["scores"][keep].tolist(), output["labels"][keep].tolist(), output["masks"][keep], strict=True
    ):
        mask = (prob[0] > mask_threshold).numpy()[r0 - row_off : r1 - row_off, c0 - col_off : c1 - col_off]
        if valid is not None:
            mask &= valid[r0 - row_off : r1 - row_off, c0 - col_off : c1 - col_off]
        instance = tight(InstanceMask(r0, c0, mask, int(label), float(score), tile=tile, window=seen))
        if instance is None or instance.area < min_area:
            continue
        b = instance.bbox
        # Within CUT_MARGIN of an inner edge counts: a soft mask border may stop a pixel short of it.
        cut = (
            (inner[0] and b[0] - r0 <= CUT_MARGIN)
            or (inner[1] and b[1] - c0 <= CUT_MARGIN)
            or (inner[2] and r1 - b[2] <= CUT_MARGIN)
            or (inner[3] and c1 - b[3] <= CUT_MARGIN)
        )
        out.append(
            InstanceMask(
                instance.row,
                instance.col,
                instance.mask,
                instance.class_id,
                instance.score,
                tile=tile,
                cut=bool(cut),
                window=seen,
            )
        )
    return out


class TileDetector:
    """Reads tiles of one scene, runs Mask R-CNN, writes each tile's detections to its own file."""

    def __init__(
        self,
        checkpoint: str | Path,
        scene: str | Path,
        out_dir: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        min_area: int = 16,
        on_read_error: OnReadError = "stop",
    ):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model, self.card = load_checkpoint(checkpoint, device=self.device)
        # Boxes under the threshold would be dropped anyway; dropping them inside the model also
        # skips pasting their full-tile masks, the slowest step of an unsure model.
        # torchvision's RoIHeads (nn.Module types every submodule attribute as Tensor | Module).
        roi_heads: Any = self.model.roi_heads
        roi_heads.score_thresh = max(roi_heads.score_thresh, score_threshold)
        self.bands = tuple(self.card.bands)
        self.mean, self.std = self.card.normalization.mean, self.card.normalization.std
        self.out_dir = Path(out_dir)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.min_area = min_area
        self.on_read_error: OnReadError = on_read_error
        self._scenes = ThreadLocalRaster(scene)
        self._forward_lock = threading.Lock()
        self.scene_shape = (self.scene.height, self.scene.width)

    @property
    def scene(self) -> rasterio.DatasetReader:
        """This thread's handle on the scene (opened on first use)."""
        return self._scenes.get()

    def __call__(self, tiles: list[Tile]) -> list[int | UnreadTile]:
        """Detect in ``tiles``; each one's index, or (``on_read_error`` skip) why it could not be read."""
        inputs = np.empty((len(tiles), len(self.bands), tiles[0].size, tiles[0].size), np.float32)
        read: list[Tile] = []
        valids = []
        unread: list[int | UnreadTile] = []
        for tile in tiles:
            got = read_or_skip(self.scene, tile, self.bands, self.on_read_error)
            if isinstance(got, UnreadTile):
                unread.append(got)
                continue
            inputs[len(read)] = normalize(got[0], self.mean, self.std)
            read.append(tile)
            valids.append(_window_valid(self.scene, tile))  # the blocks read_tile just decoded
        if read:
            with self._forward_lock:  # one batch in the model at a time; I/O of other calls overlaps it
                outputs = run_detector(self.model, inputs[: len(read)], self.device)
            self._save(read, outputs, valids)
        return [tile.index for tile in read] + unread

    def _save(self, tiles: list[Tile], outputs: list[dict], valids: list[np.ndarray]) -> None:
        """Each tile's detections, in scene pixels, to its own file."""
        for tile, output, valid in zip(tiles, outputs, valids, strict=True):
            top, left = tile.row - tile.halo, tile.col - tile.halo
            window = (top, left, top + tile.size, left + tile.size)
            masks = detections_to_masks(
                output,
                row_off=top,
                col_off=left,
                window=window,
                scene_shape=self.scene_shape,
                tile=tile.index,
                valid=valid,
                score_threshold=self.score_threshold,
                mask_threshold=self.mask_threshold,
                min_area=self.min_area,
            )
            save_masks(tile_file(self.out_dir, tile.index), masks)

    def close(self) -> None:
        self._scenes.close()


def _window_valid(src: rasterio.DatasetReader, tile: Tile) -> np.ndarray:
    """Validity of the whole tile window (False outside the scene and where it has no data)."""
    top, left = tile.row - tile.halo, tile.col - tile.halo
    valid = np.zeros((tile.size, tile.size), bool)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + tile.size, src.height), min(left + tile.size, src.width)
    valid[r0 - top : r1 - top, c0 - left : c1 - left] = read_valid(src, Window(c0, r0, c1 - c0, r1 - r0))
    return valid
