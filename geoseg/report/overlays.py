"""The map's images: the scene and the predicted classes, decimated and warped to Web Mercator.

Leaflet places an image overlay by stretching it linearly between two corners in the map's own
projection (EPSG:3857). A scene in UTM is turned by the meridian convergence (a degree or two at
a zone's edge: hundreds of metres across a large survey), so its pixels are warped onto a Web
Mercator grid here rather than pinned at their corners. Web Mercator's x depends on longitude
alone and y on latitude alone, both monotonic, so the grid's corners in degrees are exactly the
scene's bounds transformed to EPSG:4326 (densified edges): the bounds the page states are true.

Nothing here reads a scene whole: the prediction comes from the mosaic's coarsest overview that is
fine enough, read by strides one row of chunks at a time, and the scene through GDAL's decimated
read (which uses the file's own overviews where it has them).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import rasterio
import zarr
from affine import Affine
from matplotlib.colors import to_rgb
from PIL import Image
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.transform import array_bounds, from_bounds
from rasterio.warp import reproject, transform_bounds

from geoseg.evaluate.quicklook import class_colours
from geoseg.io.mosaic import MosaicInfo, geoseg_attrs, member_array
from geoseg.io.multiscales import OVERVIEWS_GROUP
from geoseg.io.overviews import list_overviews
from geoseg.report.content import ImageOverlay, LatLonBounds, LegendEntry

__all__ = [
    "MAX_SIDE",
    "MercatorGrid",
    "class_palette",
    "classes_png",
    "legend",
    "mercator_grid",
    "prediction_overlay",
    "scene_overlay",
]

MAX_SIDE = 1024  # pixels a side of an overlay: the page stays a few MB for any survey
WEB_MERCATOR = CRS.from_epsg(3857)
PREDICTION_ALPHA = 170  # of 255: the scene shows through the classes


@dataclass(frozen=True)
class MercatorGrid:
    """The Web Mercator grid every overlay of a run is warped to, and its corners in degrees."""

    transform: Affine
    height: int
    width: int
    bounds: LatLonBounds

    @property
    def pixel_deg(self) -> float:
        """About one pixel of the grid in degrees (the larger of its two spans over its pixels)."""
        b = self.bounds
        return max((b.east - b.west) / self.width, (b.north - b.south) / self.height)


def mercator_grid(mosaic: MosaicInfo, max_side: int = MAX_SIDE) -> MercatorGrid:
    """The mosaic's extent on a Web Mercator grid of at most ``max_side`` pixels a side."""
    west, south, east, north = array_bounds(mosaic.height, mosaic.width, mosaic.transform)
    left, bottom, right, top = transform_bounds(mosaic.crs, WEB_MERCATOR, west, south, east, north, densify_pts=21)
    # No finer than the mosaic: a small scene is not blown up (the browser scales the image instead).
    pixel = max(right - left, top - bottom) / min(max_side, max(mosaic.height, mosaic.width))
    width, height = max(1, round((right - left) / pixel)), max(1, round((top - bottom) / pixel))
    to_degrees = Transformer.from_crs(WEB_MERCATOR, "EPSG:4326", always_xy=True)
    lon_w, lat_s = to_degrees.transform(left, bottom)
    lon_e, lat_n = to_degrees.transform(right, top)
    bounds = LatLonBounds(south=lat_s, west=lon_w, north=lat_n, east=lon_e)
    return MercatorGrid(from_bounds(left, bottom, right, top, width, height), height, width, bounds)


def _strided(array, step: int) -> np.ndarray:
    """Every ``step``-th pixel of a 2-D zarr array, one row of chunks at a time (never the whole array)."""
    chunk = array.chunks[0]
    rows = [
        np.asarray(array[row + (-row) % step : min(row + chunk, array.shape[0]) : step, ::step])
        for row in range(0, array.shape[0], chunk)
    ]
    return np.concatenate(rows)


def _decimated_classes(mosaic: MosaicInfo, max_side: int) -> tuple[np.ndarray, np.ndarray, Affine]:
    """(labels, valid, transform) at most about ``max_side`` a side, from the coarsest overview fine enough."""
    step = max(1, math.ceil(max(mosaic.height, mosaic.width) / max_side))
    # Overview levels hold ``labels`` and ``valid``: another class array (the flood) is read from the base.
    factors = [f for f in list_overviews(mosaic.path) if f <= step] if mosaic.labels_name == "labels" else []
    if factors:
        factor = max(factors)
        group = cast(zarr.Group, mosaic.group[f"{OVERVIEWS_GROUP}/{factor}"])
        labels, valid = member_array(group, "labels"), member_array(group, "valid")
        transform = Affine.from_gdal(*geoseg_attrs(group)["transform"])
    else:
        factor, labels, valid, transform = 1, mosaic.labels, mosaic.valid, mosaic.transform
    sub = max(1, math.ceil(step / factor))
    # Each kept pixel stands for the sub x sub block it starts: the block's centre is half a block
    # on, the kept pixel's half a pixel; shift by the difference so the warp puts it where it is.
    shift = 0.5 - sub / 2
    return _strided(labels, sub), _strided(valid, sub), transform @ Affine.translation(shift, shift) @ Affine.scale(sub)


def _warp(image: np.ndarray, transform: Affine, crs: CRS, grid: MercatorGrid, resampling: Resampling) -> np.ndarray:
    """(bands, H, W) uint8 on ``transform`` → the same bands on ``grid``; 0 where the source has nothing."""
    out = np.zeros((image.shape[0], grid.height, grid.width), np.uint8)
    for band in range(image.shape[0]):
        reproject(
            image[band],
            out[band],
            src_transform=transform,
            src_crs=crs,
            dst_transform=grid.transform,
            dst_crs=WEB_MERCATOR,
            resampling=resampling,
        )
    return out


def _png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def class_palette(colours: dict[int, str], alpha: dict[int, int]) -> np.ndarray:
    """(256, 4) uint8 RGBA by class code: ``colours`` at ``alpha`` (255 where not given); other codes clear."""
    palette = np.zeros((256, 4), np.uint8)
    for code, colour in colours.items():
        palette[code, :3] = np.round(np.array(to_rgb(colour)) * 255)
        palette[code, 3] = alpha.get(code, 255)
    return palette


def classes_png(mosaic: MosaicInfo, grid: MercatorGrid, palette: np.ndarray, max_side: int = MAX_SIDE) -> bytes:
    """The mosaic's class array (``labels``, or another through ``labels_view``) in ``palette`` on ``grid``.

    Invalid pixels are clear. Read decimated (never whole) and warped by nearest neighbour: classes never blend.
    """
    labels, valid, transform = _decimated_classes(mosaic, max_side)
    rgba = np.moveaxis(palette[labels], -1, 0)
    rgba[3][valid == 0] = 0
    return _png(_warp(rgba, transform, mosaic.crs, grid, Resampling.nearest))


def prediction_overlay(mosaic: MosaicInfo, grid: MercatorGrid, max_side: int = MAX_SIDE) -> ImageOverlay:
    """The predicted classes in the quicklook's colours; class 0 (background) and invalid pixels clear."""
    colours = dict(enumerate(class_colours(mosaic.class_names)))
    palette = class_palette(colours, {code: PREDICTION_ALPHA if code else 0 for code in colours})
    png = classes_png(mosaic, grid, palette, max_side)
    return ImageOverlay("prediction", "prediction (classes)", png, grid.bounds, opacity=1.0)


def _scene_pixels(src, bands: list[int], shape: tuple[int, int]) -> np.ndarray:
    """RGBA uint8 of the scene at ``shape``: stretched between its 1st and 99th percentiles, clear where nodata."""
    rgb = src.read(bands, out_shape=(len(bands), *shape), resampling=Resampling.average).astype(np.float32)
    mask = src.dataset_mask(out_shape=shape) > 0
    if len(bands) < 3:
        rgb = np.repeat(rgb[:1], 3, axis=0)
    low, high = np.percentile(rgb[:, mask], [1, 99]) if mask.any() else (0.0, 1.0)
    scaled = np.clip((rgb - low) / max(high - low, 1e-6), 0, 1) * 255
    return np.concatenate([np.round(scaled).astype(np.uint8), (mask * 255).astype(np.uint8)[None]])


def scene_overlay(mosaic: MosaicInfo, grid: MercatorGrid, max_side: int = MAX_SIDE) -> ImageOverlay | str:
    """The scene the mosaic was predicted from (the file or survey index predict read), or why it is not shown.

    A scene that cannot be opened here (moved, or on object storage without credentials on this
    machine) is stated on the page rather than failing the run: every other part of the report stands.
    """
    source = mosaic.fingerprint.get("scene")
    bands = [int(b) for b in mosaic.fingerprint.get("bands") or []][:3]
    if not source:
        return "the mosaic does not record its scene (made by an older geoseg)"
    if "://" not in source and not Path(source).exists():
        return f"{source} is not on this machine"
    try:
        with rasterio.open(source) as src:
            step = max(1, math.ceil(max(src.height, src.width) / max_side))
            shape = (math.ceil(src.height / step), math.ceil(src.width / step))
            rgba = _scene_pixels(src, bands or list(range(1, min(3, src.count) + 1)), shape)
            # GDAL resamples the whole raster to ``shape``: pixels of src.width / shape[1] each.
            transform = src.transform @ Affine.scale(src.width / shape[1], src.height / shape[0])
            crs = src.crs or mosaic.crs
    except RasterioIOError as exc:
        return f"{source} could not be read ({exc})"
    warped = _warp(rgba, transform, crs, grid, Resampling.bilinear)
    warped[3] = np.where(warped[3] >= 128, 255, 0)  # a hard edge where the data ends
    return ImageOverlay("scene", "scene (image)", _png(warped), grid.bounds, opacity=1.0)


def legend(class_names: list[str] | tuple[str, ...]) -> tuple[LegendEntry, ...]:
    """The classes in the colours the quicklook and the map use."""
    return tuple(
        LegendEntry(str(name), colour, "clear on the map" if index == 0 else "")
        for index, (name, colour) in enumerate(zip(class_names, class_colours(class_names), strict=True))
    )
