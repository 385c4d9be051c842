"""A cheap check that a raster's body is whole, before any stage reads it.

Opening a GeoTIFF reads only its header, so a file cut short by a failed copy,
or with a damaged block, opens and inspects cleanly and fails only when a model
actor reaches the bad block, hours into a run. :func:`check_raster_blocks` finds
both kinds of damage up front, in milliseconds:

- **the block index**: GDAL reports every block's byte offset and length from the
  TIFF's TileOffsets/TileByteCounts (tags 324/325, TIFF 6.0 section 15) or
  StripOffsets/StripByteCounts (tags 273/279, TIFF 6.0 section 3) as the
  ``BLOCK_OFFSET_x_y`` / ``BLOCK_SIZE_x_y`` items of its ``TIFF`` metadata domain;
  every block must lie inside the file (a truncated file fails here, whichever
  block it cut);
- **a sample of blocks is decoded**: up to :data:`SAMPLE_BLOCKS` blocks spread
  evenly over the file, the first and the last always among them, read through
  GDAL as the stages will (a corrupted compressed block fails here if sampled).

An object-storage URI has no cheap file size: only its sample is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import rasterio
from rasterio.enums import Interleaving
from rasterio.errors import RasterioIOError

from geoseg.config.locations import RemotePath, as_location, is_uri
from geoseg.errors import InputRasterError

__all__ = ["SAMPLE_BLOCKS", "check_raster_blocks", "gdal_reason", "repair_hint", "sample_blocks"]

SAMPLE_BLOCKS = 16


def gdal_reason(error: BaseException) -> str:
    """GDAL's own words for a failed read, on one line.

    rasterio raises ``Read failed. See previous exception for details.`` and chains
    GDAL's errors under it; the innermost (e.g. ``ZIPDecode:Decoding error at
    scanline 64``) is the one that says what is wrong.
    """
    seen = [error]
    while (nxt := seen[-1].__cause__ or seen[-1].__context__) is not None and nxt not in seen:
        seen.append(nxt)
    return " ".join(str(seen[-1]).split()) or type(seen[-1]).__name__


def repair_hint(path: Path | RemotePath) -> str:
    """The fix for a damaged raster: a fresh copy, or a clean re-export of a good one."""
    return (
        f"re-download the file, or re-export it from a good copy (e.g. `gdal_translate -of COG good.tif {path.name}`)"
    )


def check_raster_blocks(path: str | Path, *, field: str = "scene", sample: int = SAMPLE_BLOCKS) -> None:
    """Raise :class:`InputRasterError` if ``path``'s block index runs past its end or a sampled block does not decode.

    ``field`` names the job field the path came from, for the error message.
    """
    location = as_location(path)
    try:
        with rasterio.open(location) as src:
            rows, cols = _block_grid(src)
            if src.driver == "GTiff" and not is_uri(location):
                _check_index(src, location, field, rows, cols)
            _decode_sample(src, location, field, rows, cols, sample)
    except RasterioIOError as exc:  # the header itself: inspect_scene reports it with its own fix
        raise InputRasterError(
            f"{location}: {field}: not a readable raster ({gdal_reason(exc)}); {repair_hint(location)}"
        ) from None


def _block_grid(src: rasterio.DatasetReader) -> tuple[int, int]:
    block_h, block_w = src.block_shapes[0]
    return -(-src.height // block_h), -(-src.width // block_w)


def _check_index(src: rasterio.DatasetReader, path: Path | RemotePath, field: str, rows: int, cols: int) -> None:
    """Every block of every band's plane lies inside the file."""
    size = os.path.getsize(str(path))
    # Pixel-interleaved bands share one block per position; band-interleaved ones have one plane each.
    planes = range(1, src.count + 1) if src.interleaving == Interleaving.band and src.count > 1 else (1,)
    past: list[tuple[int, int, int, int, int]] = []
    for band in planes:
        for row in range(rows):
            for col in range(cols):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                if not offset or not length:  # a sparse block (GDAL fills it with nodata), or none reported
                    continue
                if int(offset) + int(length) > size:
                    past.append((band, row, col, int(offset), int(length)))
    if past:
        band, row, col, offset, length = past[0]
        where = f"band {band} " if len(planes) > 1 else ""
        more = f", and {len(past) - 1} more block(s) do too" if len(past) > 1 else ""
        raise InputRasterError(
            f"{path}: {field}: damaged: {where}block (row {row}, col {col}) at byte offset {offset} "
            f"({length} bytes) runs past the end of the file ({size} bytes){more}; {repair_hint(path)}"
        )


def sample_blocks(rows: int, cols: int, sample: int = SAMPLE_BLOCKS) -> list[tuple[int, int]]:
    """Up to ``sample`` (row, col) blocks spread evenly in row-major order, the first and the last included."""
    count = rows * cols
    if count <= sample:
        picks = list(range(count))
    else:
        picks = sorted({round(i * (count - 1) / (sample - 1)) for i in range(sample)})
    return [divmod(k, cols) for k in picks]


def _decode_sample(
    src: rasterio.DatasetReader, path: Path | RemotePath, field: str, rows: int, cols: int, sample: int
) -> None:
    for row, col in sample_blocks(rows, cols, sample):
        window = src.block_window(1, row, col)
        try:
            src.read(window=window)  # every band: a band-interleaved file keeps each band's block apart
        except RasterioIOError as exc:
            raise InputRasterError(
                f"{path}: {field}: damaged: block (row {row}, col {col}) does not decode ({gdal_reason(exc)}); "
                f"{repair_hint(path)}"
            ) from None
