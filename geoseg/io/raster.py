"""Reading scenes: validation up front, then mirrored tile windows.

Nothing here reads a whole scene; every read is a rasterio window.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geoseg.config.locations import RemotePath, as_location, is_uri
from geoseg.errors import InputRasterError
from geoseg.io.integrity import gdal_reason, repair_hint
from geoseg.tiling import Tile, mirror_indices

__all__ = ["SceneInfo", "ThreadLocalRaster", "inspect_scene", "iter_blocks", "read_tile", "read_valid"]


@dataclass(frozen=True)
class SceneInfo:
    """What the pipeline needs to know about a scene, read once from its header."""

    path: Path | RemotePath
    height: int
    width: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    nodata: float | None
    bands: tuple[int, ...]  # 1-based bands the model reads, in order
    alpha: int | None  # 1-based alpha band, used only as a validity mask
    sources: tuple[str, ...] = ()  # a survey's files (geoseg.io.survey); empty for a single raster

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)  # (W, S, E, N)

    @property
    def pixel_area(self) -> float:
        return abs(self.transform.a * self.transform.e)

    def mismatch_fix(self, bands: int, dtype: str, what: str) -> str:
        """The fix for a scene whose bands or data type differ from ``bands`` of ``dtype`` (``what`` has them).

        Only a fix that works: ``bands:`` can pick a subset of a scene's bands, never add bands or
        change the data type.
        """
        usable = self.count - (self.alpha is not None)
        if dtype != self.dtype:
            return (
                f"{what} reads {dtype}, and no job setting converts {self.dtype} pixels: use imagery stored as "
                f"{dtype}, or train a model on {self.dtype} imagery like this scene"
            )
        if usable >= bands:
            example = ", ".join(str(b) for b in range(1, bands + 1))
            return f"pick the {bands} band(s) {what} reads with `bands:` (e.g. `bands: [{example}]`)"
        return (
            f"this scene has only {usable} usable band(s) and {what} reads {bands}: use imagery with "
            f"{bands} band(s), or train a model on {usable}-band imagery"
        )


def inspect_scene(path: str | Path, *, field: str = "scene", bands: list[int] | None = None) -> SceneInfo:
    """Open a GeoTIFF's header and check that geoseg can use it.

    ``field`` names the job field the path came from, for the error message.
    """
    path = as_location(path)
    if not path.exists():  # an object-storage URI is checked by opening it
        raise InputRasterError(f"{path}: {field}: file not found; check the path in the job file")
    try:
        with rasterio.open(path) as src:
            crs, transform = src.crs, src.transform
            count, dtypes, nodata = src.count, src.dtypes, src.nodata
            height, width = src.height, src.width
            interps = src.colorinterp
            # Touch one pixel so that a corrupt body fails here, not in a worker.
            src.read(1, window=Window(0, 0, 1, 1))
    except RasterioIOError as exc:
        if is_uri(path):
            raise InputRasterError(
                f"{path}: {field}: cannot read it from object storage ({exc}); check the URI, "
                "and the credentials and endpoint in the environment (AWS_* variables)"
            ) from None
        raise InputRasterError(
            f"{path}: {field}: not a readable raster ({gdal_reason(exc)}); re-export it as GeoTIFF"
        ) from None
    if crs is None:
        raise InputRasterError(
            f"{path}: {field}: raster has no CRS; assign one, e.g. `gdal_edit.py -a_srs EPSG:32633 {path.name}`"
        )
    if transform.is_identity or transform.b != 0 or transform.d != 0:
        raise InputRasterError(
            f"{path}: {field}: needs a north-up geotransform (got {tuple(transform)[:6]!r}); warp it with gdalwarp"
        )
    if len(set(dtypes)) != 1:
        raise InputRasterError(f"{path}: {field}: bands have mixed data types; convert with gdal_translate -ot")
    alpha = next((i + 1 for i, ci in enumerate(interps) if ci == ColorInterp.alpha), None)
    colour_bands = tuple(b for b in range(1, count + 1) if b != alpha)
    if bands:
        bad = [b for b in bands if b < 1 or b > count]
        if bad:
            raise InputRasterError(
                f"{path}: bands: {bad!r} not in the raster's bands 1..{count}; fix `bands:` in the job"
            )
        if alpha in bands:
            raise InputRasterError(
                f"{path}: bands: band {alpha} is the alpha band (a mask, not a colour); leave it out of `bands:`"
            )
        colour_bands = tuple(bands)
    return SceneInfo(path, height, width, count, dtypes[0], crs, transform, nodata, colour_bands, alpha)


def read_valid(src: rasterio.DatasetReader, window: Window) -> np.ndarray:
    """True where the scene has data: GDAL's dataset mask folds nodata and alpha together."""
    return src.dataset_mask(window=window) > 0


def read_tile(
    src: rasterio.DatasetReader, tile: Tile, bands: tuple[int, ...], *, field: str = "predict.scene"
) -> tuple[np.ndarray, np.ndarray]:
    """Read a tile's model input (bands × size × size, mirrored outside) and its core validity.

    A read that fails (a block damaged after the inputs were checked) raises
    :class:`InputRasterError` naming the file and the window; finished chunks
    are kept, so a rerun on a repaired file resumes.
    """
    rows = mirror_indices(*tile.read_rows, src.height)
    cols = mirror_indices(*tile.read_cols, src.width)
    r0, c0 = int(rows.min()), int(cols.min())
    window = Window(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1)
    try:
        block = src.read(list(bands), window=window)
        valid = read_valid(src, Window(tile.col, tile.row, tile.width, tile.height))
    except RasterioIOError as exc:
        path = as_location(src.name)
        raise InputRasterError(
            f"{path}: {field}: damaged: cannot read row {r0}, col {c0}, {window.height}×{window.width} px "
            f"({gdal_reason(exc)}); {repair_hint(path)}, then rerun: finished chunks are kept"
        ) from None
    pixels = block[:, rows - r0][:, :, cols - c0]
    return pixels, valid


def iter_blocks(height: int, width: int, block: int = 512):
    """Yield windows covering a raster in ``block``-sized squares, row-major."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


class ThreadLocalRaster:
    """One GDAL handle on a raster per thread (GDAL handles are not thread-safe), opened on first use."""

    def __init__(self, path: str | Path, *, field: str = "predict.scene"):
        self.path = as_location(path)
        self.field = field
        self._local = threading.local()
        self._handles: list[rasterio.DatasetReader] = []

    def get(self) -> rasterio.DatasetReader:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            try:
                handle = self._local.handle = rasterio.open(self.path)
            except RasterioIOError as exc:  # checked before the run: gone or damaged since
                raise InputRasterError(
                    f"{self.path}: {self.field}: cannot open it ({gdal_reason(exc)}); restore the file "
                    "and rerun: finished chunks are kept"
                ) from None
            self._handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles.clear()
