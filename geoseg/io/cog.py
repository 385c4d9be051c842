"""Export a mosaic array as a Cloud-Optimized GeoTIFF (COG).

Out of core in two steps: the array is copied window by window from its Zarr
chunks into a temporary tiled GeoTIFF (tiles the size of the Zarr chunks when
TIFF allows it, so each chunk is decoded once), then GDAL's COG driver rewrites
that into the final layout (512-pixel tiles, DEFLATE, internal overviews built
by ``overview_resampling``, header and overview tiles first). Both GDAL steps
stream through its block cache; nothing holds the scene.

Nodata: for ``labels`` the pixels where ``valid`` is 0 are written as **255**
and 255 is declared the band's nodata value, so GIS tools show them as
transparent and GDAL's overview resampling skips them (a class index is < 255,
checked). ``valid`` itself is exported as is (0/1, no nodata). ``scores`` (when
the mosaic has them) becomes one band per class, uint8 p×255 with GDAL scale
1/255, and an internal mask (0 where ``valid`` is 0) instead of a nodata value,
since every byte value is a possible probability.

Class names travel in the band description and metadata: the dataset tag
``CLASS_NAMES`` (a JSON list) and band tags ``CLASS_<i>=<name>``, all stored in
the TIFF's GDAL_METADATA tag and therefore inside the COG.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoseg.errors import InputRasterError, JobConfigError, StageError
from geoseg.io.mosaic import DATA_ARRAYS, MosaicInfo, open_mosaic

__all__ = ["EXPORTABLE", "LABELS_NODATA", "OVERVIEW_RESAMPLINGS", "export_cog"]

EXPORTABLE = (*DATA_ARRAYS, "scores")

LABELS_NODATA = 255
OVERVIEW_RESAMPLINGS = ("nearest", "mode", "average", "bilinear", "cubic", "cubicspline", "lanczos", "rms")
COG_BLOCKSIZE = 512


def _stage_block(chunk: int) -> int:
    # TIFF tiles must be multiples of 16 a side. When the Zarr chunk is one, use
    # it: each window then decodes exactly one chunk and fills whole TIFF tiles.
    return chunk if chunk % 16 == 0 and chunk <= 4096 else COG_BLOCKSIZE


def _resampling_for(array: str, overview_resampling: str | None, mosaic_path: Path, out: Path) -> str:
    """Check ``array`` and the overview resampling; return the resampling, lower case.

    The default keeps classes categorical (``mode``) and averages probabilities.
    """
    if array not in EXPORTABLE:
        raise InputRasterError(f"{mosaic_path}: no array {array!r} to export; use one of {', '.join(EXPORTABLE)}")
    if overview_resampling is None:
        overview_resampling = "average" if array == "scores" else "mode"
    resampling = str(overview_resampling).lower()
    if resampling not in OVERVIEW_RESAMPLINGS:
        raise JobConfigError(
            f"{out}: overview_resampling {overview_resampling!r} is not one of "
            f"{', '.join(OVERVIEW_RESAMPLINGS)}; use 'mode' for class labels"
        )
    return resampling


def _check_exportable(mosaic: MosaicInfo, array: str, mosaic_path: Path) -> None:
    """Refuse what this mosaic cannot give: missing scores, or no byte value left for nodata."""
    if array == "scores" and not mosaic.has_scores:
        raise InputRasterError(
            f"{mosaic_path}: mosaic has no scores array; predict with `predict.scores: true` "
            "to export them, or export labels"
        )
    if array == "labels" and len(mosaic.class_names) > LABELS_NODATA:
        raise InputRasterError(
            f"{mosaic_path}: {len(mosaic.class_names)} classes leave no room for nodata "
            f"{LABELS_NODATA} in a uint8 COG; export `valid` or fewer classes"
        )


def _stage_profile(mosaic: MosaicInfo, array: str, bands: int) -> dict:
    """Rasterio profile of the temporary tiled GeoTIFF the COG driver then rewrites."""
    block = _stage_block(mosaic.chunk)
    profile = {
        "driver": "GTiff",
        "height": mosaic.height,
        "width": mosaic.width,
        "count": bands,
        "dtype": "uint8",
        "crs": mosaic.crs,
        "transform": mosaic.transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        # Fast, light compression: this file is read once by the COG step and deleted.
        "compress": "deflate",
        "zlevel": 1,
        "BIGTIFF": "IF_SAFER",
    }
    if array == "labels":
        profile["nodata"] = LABELS_NODATA
    if array == "scores":
        profile["interleave"] = "pixel"
    return profile


def _copy_blocks(dst, mosaic: MosaicInfo, array: str) -> None:
    """Copy ``array`` into ``dst`` one TIFF block at a time (the block matches the Zarr chunk when it can).

    ``labels`` get :data:`LABELS_NODATA` where ``valid`` is 0; ``scores`` get an
    internal mask instead, since every byte value is a possible probability.
    """
    for _, window in dst.block_windows(1):
        rows, cols = window.toslices()
        win = Window(window.col_off, window.row_off, window.width, window.height)
        if array == "scores":
            dst.write(np.asarray(mosaic.array("scores")[:, rows, cols], dtype=np.uint8), window=win)
            dst.write_mask(np.asarray(mosaic.valid[rows, cols]) != 0, window=win)
            continue
        data = np.asarray(mosaic.array(array)[rows, cols], dtype=np.uint8)
        if array == "labels":
            valid = np.asarray(mosaic.valid[rows, cols])
            data = np.where(valid != 0, data, np.uint8(LABELS_NODATA))
        dst.write(data, 1, window=win)


def _describe(dst, mosaic: MosaicInfo, array: str, bands: int) -> None:
    """Band descriptions, scales and tags (class names, nodata meaning): GDAL_METADATA, kept by the COG."""
    tags = {"GEOSEG_ARRAY": array, "CLASS_NAMES": json.dumps(list(mosaic.class_names))}
    if array == "scores":
        for band, name in enumerate(mosaic.class_names, start=1):
            dst.set_band_description(band, f"probability of {name}")
        dst.scales, dst.offsets = (1 / 255,) * bands, (0.0,) * bands
        tags["SCORES"] = "uint8 probability x 255; multiply by the band scale (1/255)"
    else:
        dst.set_band_description(1, "class index" if array == "labels" else "1 where the input had data")
        dst.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(mosaic.class_names)})
    if array == "labels":
        tags["NODATA_MEANING"] = f"{LABELS_NODATA}: no valid input pixel (valid == 0)"
    dst.update_tags(**tags)


def _remove_leftovers(*paths: Path) -> None:
    """Delete temporary files that may or may not exist."""
    for leftover in paths:
        # OSError: e.g. its folder could not be made, so nothing was left there.
        with contextlib.suppress(OSError):
            leftover.unlink(missing_ok=True)


def export_cog(
    mosaic_path: str | Path, out_path: str | Path, *, array: str = "labels", overview_resampling: str | None = None
) -> Path:
    """Write one mosaic array as a Cloud-Optimized GeoTIFF.

    Args:
        mosaic_path: a mosaic written by :func:`geoseg.io.mosaic.create_mosaic`.
        out_path: the ``.tif`` to write; written under a temporary name in the
            same folder and renamed when complete (an existing file is replaced).
        array: ``labels`` (nodata 255 where ``valid`` is 0), ``valid``, or
            ``scores`` (one band per class, masked where ``valid`` is 0).
        overview_resampling: GDAL resampling for the internal overviews; default
            ``mode`` for ``labels``/``valid`` (keeps classes categorical) and
            ``average`` for ``scores``.

    Returns:
        ``out_path`` as a Path.

    Raises:
        InputRasterError: the mosaic is missing or not a mosaic, or ``array`` is unknown.
        JobConfigError: ``overview_resampling`` is not a GDAL overview resampling.
        StageError: GDAL could not write the file (disk full, no permission).
    """
    mosaic_path = Path(mosaic_path)
    out = Path(out_path)
    resampling = _resampling_for(array, overview_resampling, mosaic_path, out)
    mosaic = open_mosaic(mosaic_path)
    _check_exportable(mosaic, array, mosaic_path)
    bands = len(mosaic.class_names) if array == "scores" else 1
    profile = _stage_profile(mosaic, array, bands)

    stage = out.with_name(f".{out.name}.{os.getpid()}.stage.tif")
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial.tif")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # An internal mask (not a .msk sidecar), which the COG driver carries over.
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(stage, "w", **profile) as dst:
            _copy_blocks(dst, mosaic, array)
            _describe(dst, mosaic, array, bands)
        rasterio.shutil.copy(
            stage,
            partial,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=COG_BLOCKSIZE,
            OVERVIEW_RESAMPLING=resampling.upper(),
            BIGTIFF="IF_SAFER",
        )
        os.replace(partial, out)  # only a complete COG carries the final name
    except (RasterioError, OSError) as exc:
        message = str(exc).replace("\n", " ")
        raise StageError(
            f"{out}: writing the COG of {mosaic_path} failed ({message}); check free space and write permission there"
        ) from exc
    finally:
        _remove_leftovers(stage, partial)
    return out
