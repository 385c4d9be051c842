"""A mosaic's confusion matrix against a label raster, one band of chunk rows at a time.

Each band is independent (it opens both rasters itself and reads only its own
chunks), so bands can run as parallel tasks; integer counts summed in any order
give the same matrix. Each band's counts can be kept (:func:`save_counts`) under a
key naming the mosaic's state and the reference file, so a killed evaluation
resumes at the bands it had not counted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.evaluate.metrics import confusion_matrix
from geoseg.io.mosaic import MosaicInfo, open_mosaic

__all__ = ["band_confusion", "chunk_row_bands", "counts_key", "save_counts", "saved_counts"]

REFERENCE_CACHE_MB = 64  # two rows of 512² uint8 blocks of a reference up to ~65,000 px wide


def chunk_row_bands(height: int, chunk: int, bands: int) -> list[tuple[int, int]]:
    """``(first_row, stop_row)`` pixel ranges covering ``height`` in about ``bands`` runs of whole chunk rows."""
    rows = -(-height // chunk)
    per_band = -(-rows // max(1, min(bands, rows)))
    return [(r * chunk, min((r + per_band) * chunk, height)) for r in range(0, rows, per_band)]


def band_confusion(mosaic_path: str | Path, truth_path: str | Path, first_row: int, stop_row: int) -> np.ndarray:
    """The confusion counts (truth rows, prediction columns) of the chunks in pixel rows ``first_row:stop_row``."""
    mosaic = open_mosaic(Path(mosaic_path))
    n = len(mosaic.class_names)
    matrix = np.zeros((n, n), np.int64)
    # A small block cache: chunks are read in row order, so GDAL needs about two rows of the reference's
    # blocks at a time; its default (5% of RAM) would otherwise fill with the whole reference.
    with rasterio.Env(GDAL_CACHEMAX=REFERENCE_CACHE_MB), rasterio.open(truth_path) as truth:
        for row, col, h, w in mosaic.chunk_windows():
            if not first_row <= row < stop_row:
                continue
            reference = truth.read(1, window=Window(col, row, w, h))
            predicted = np.asarray(mosaic.labels[row : row + h, col : col + w])
            valid = np.asarray(mosaic.valid[row : row + h, col : col + w])
            matrix += confusion_matrix(reference, predicted, n, valid=valid)
    return matrix


def counts_key(mosaic: MosaicInfo, reference: str | Path) -> str:
    """What a band's counts are made from: the mosaic (fingerprint, finished chunks, classes) and the reference.

    ``reference`` is the file the reference comes from (path, size, mtime): the label GeoTIFF, or
    for polygons the labels file (their raster on the scene grid is made again by every run).
    """
    source = Path(reference).resolve()
    stat = source.stat()
    made_from = {
        "fingerprint": mosaic.fingerprint,
        "done": hashlib.sha256(np.asarray(mosaic.array("done")[:]).tobytes()).hexdigest(),
        "shape": [mosaic.height, mosaic.width, mosaic.chunk],
        "classes": list(mosaic.class_names),
        "reference": [str(source), stat.st_size, stat.st_mtime_ns],
    }
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode()).hexdigest()


def _part(parts_dir: Path, first_row: int, stop_row: int) -> Path:
    return parts_dir / f"band_{first_row:08d}_{stop_row:08d}.npz"


def saved_counts(parts_dir: Path, key: str, first_row: int, stop_row: int) -> np.ndarray | None:
    """The counts a run saved for these rows under ``key``, or None."""
    try:
        with np.load(_part(parts_dir, first_row, stop_row), allow_pickle=False) as saved:
            return saved["counts"] if str(saved["key"]) == key else None
    except (OSError, ValueError, KeyError):
        return None


def save_counts(parts_dir: Path, key: str, first_row: int, stop_row: int, counts: np.ndarray) -> None:
    """Keep a band's counts (written whole, then renamed: a killed write leaves nothing to misread)."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    final = _part(parts_dir, first_row, stop_row)
    partial = final.with_name(final.name + ".partial")
    with open(partial, "wb") as out:
        np.savez(out, key=np.array(key), counts=counts)
    os.replace(partial, final)
