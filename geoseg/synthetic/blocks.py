"""A benchmark scene of any size, made block by block: ``geoseg bench`` predicts and trains on it.

Each block is a pure function of its position (a few sinusoids plus seeded
noise), so a 20000² scene costs no more memory than a 512² one and any block
can be made alone. Unlike the demo scenes (:mod:`geoseg.synthetic.scene`) it
has no objects to learn: it measures speed, not accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from geoseg.io.raster import iter_blocks
from geoseg.models.card import ModelCard, Normalization

__all__ = [
    "CLASSES",
    "MEAN",
    "PIXEL_SIZE",
    "SCENE_CRS",
    "STD",
    "scene_card",
    "scene_path",
    "synthetic_block",
    "usable_scene",
    "write_synthetic_scene",
]

SCENE_CRS = "EPSG:32633"
PIXEL_SIZE = 0.5  # metres: a 0.25 m² ground pixel, as in a typical aerial survey
SCENE_VERSION = 1  # bump when the generator changes, so cached scenes are not reused
CLASSES = ["background", "water", "building"]
# Mean/std of the generator's bands (128 ± ~40): the benchmark does not need
# exact statistics, and computing them would read the whole scene.
MEAN, STD = [128.0, 120.0, 110.0], [40.0, 40.0, 40.0]


def scene_path(workdir: str | Path, size: int) -> Path:
    """Where the cached synthetic scene of ``size`` pixels a side lives."""
    return Path(workdir) / f"bench_scene_{size}_v{SCENE_VERSION}.tif"


def synthetic_block(window: Window, seed: int) -> np.ndarray:
    """(3, h, w) uint8: a few sinusoids in scene coordinates plus per-block noise.

    Smooth enough to compress, busy enough that no block is constant, and a
    pure function of the block's position, so any block can be made alone.
    """
    h, w = int(window.height), int(window.width)
    y = np.arange(window.row_off, window.row_off + h, dtype=np.float32)[:, None]
    x = np.arange(window.col_off, window.col_off + w, dtype=np.float32)[None, :]
    tau = np.float32(2 * np.pi)
    rng = np.random.default_rng((seed, int(window.row_off), int(window.col_off)))
    out = np.empty((3, h, w), np.uint8)
    waves = (
        (700.0, 900.0, 173.0),
        (1300.0, 410.0, 97.0),
        (530.0, 2100.0, 251.0),
    )
    for band, (px, py, pd) in enumerate(waves):
        value = (
            (np.sin(tau * x / px) * np.cos(tau * y / py)) * np.float32(50)
            + np.sin(tau * (x + y) / pd) * np.float32(20)
            + np.float32(MEAN[band])
        )
        value += rng.integers(-3, 4, size=(h, w), dtype=np.int16)
        np.clip(value, 1, 255, out=value)
        out[band] = value.astype(np.uint8)
    return out


def write_synthetic_scene(path: str | Path, size: int, *, block: int = 512, seed: int = 0) -> Path:
    """Write a ``size``×``size`` 3-band uint8 GeoTIFF block by block; return its path.

    Tiled (``block``-pixel blocks, pixel-interleaved), DEFLATE-compressed, at
    0.5 m in EPSG:32633 (horizontal predictor, about 2:1 like real orthophotos).
    One block is in memory at a time and GDAL's block cache is capped, so memory
    stays flat whatever ``size``. Written to a temporary name and renamed, so an
    interrupted write is never reused.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels (got {size!r})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": 3,
        "dtype": "uint8",
        "crs": SCENE_CRS,
        "transform": Affine(PIXEL_SIZE, 0, 500000.0, 0, -PIXEL_SIZE, 5000000.0),
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if size >= 16:  # GeoTIFF blocks are multiples of 16; tiny scenes stay striped
        blocksize = min(block, 16 * (size // 16))
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    # Each write fills whole blocks; a small cache makes GDAL flush them as it
    # goes instead of holding up to 5% of RAM of dirty blocks.
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
        step = profile.get("blockxsize", size)
        for window in iter_blocks(size, size, step):
            dst.write(synthetic_block(window, seed), window=window)
    os.replace(tmp, path)
    return path


def usable_scene(path: Path, size: int) -> bool:
    try:
        with rasterio.open(path) as src:
            return (
                (src.width, src.height, src.count, src.dtypes[0]) == (size, size, 3, "uint8")
                and src.crs is not None
                and src.crs.to_epsg() == 32633
            )
    except rasterio.errors.RasterioIOError:
        return False


def scene_card(arch: str, encoder: str, options: dict[str, Any]) -> ModelCard:
    """The model card of a randomly initialised model for this scene: its 3 uint8 bands, classes and statistics."""
    return ModelCard(
        arch=arch,
        encoder=encoder,
        options=options,
        classes=tuple(CLASSES),
        bands=(1, 2, 3),
        dtype="uint8",
        normalization=Normalization(mean=tuple(MEAN), std=tuple(STD)),
    )
