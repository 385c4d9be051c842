"""Label polygons: validate, bring into the scene's CRS, rasterize block by block."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
from rasterio.features import rasterize
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform
from shapely.geometry import box

from geoseg.config.locations import as_location, is_uri
from geoseg.errors import InputVectorError
from geoseg.io.raster import SceneInfo, iter_blocks, read_valid

__all__ = ["IGNORE", "load_labels", "rasterize_labels"]

IGNORE = 255  # label value for pixels without data; losses and metrics skip it


def load_labels(
    path: str | Path,
    *,
    scene: SceneInfo,
    classes: list[str],
    field: str,
    source: str = "labels",
    ignore: list[str] | tuple[str, ...] = (),
) -> gpd.GeoDataFrame:
    """Read label polygons, check them against the scene and classes, return them in the scene CRS.

    The result keeps the file order (later features are burned over earlier
    ones) and has an integer ``class_id`` column. Polygons whose class is in
    ``ignore`` are left out (any other unknown class name is an error).
    """
    path = as_location(path)
    if not path.exists():  # an object-storage URI is checked by opening it
        raise InputVectorError(f"{path}: {source}: file not found; check the path in the job file")
    try:
        frame = gpd.read_file(str(path))
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as exc:
        hint = (
            "; check the URI, and the credentials and endpoint in the environment (AWS_* variables)"
            if is_uri(path)
            else ""
        )
        raise InputVectorError(f"{path}: {source}: not a readable vector file ({exc}){hint}") from None
    if field not in frame.columns:
        raise InputVectorError(
            f"{path}: {source}: no attribute {field!r} (has {[c for c in frame.columns if c != 'geometry']!r}); "
            "set train.label_field to the column holding class names"
        )
    if frame.crs is None:
        raise InputVectorError(
            f"{path}: {source}: labels have no CRS; save them with one (QGIS: Export > Save Features As)"
        )
    names = frame[field].astype(str)
    if ignore:
        frame, names = frame[~names.isin(list(ignore))], names[~names.isin(list(ignore))]
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise InputVectorError(
            f"{path}: {source}: class names {unknown!r} are not in the job's classes {classes!r}; "
            "add them to `classes:` or `train.ignore_classes:`, or fix the labels"
        )
    frame = frame.assign(class_id=names.map({name: i for i, name in enumerate(classes)}).astype("uint8"))
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if frame.crs != scene.crs:
        frame = frame.to_crs(scene.crs)  # reproject, never silently misalign
    if not frame.intersects(box(*scene.bounds)).any():
        raise InputVectorError(
            f"{path}: {source}: no label polygon overlaps the scene {scene.path.name} "
            f"(labels bounds {tuple(round(v, 1) for v in frame.total_bounds)!r}, scene bounds "
            f"{tuple(round(v, 1) for v in scene.bounds)!r} in {scene.crs}); check that they belong together"
        )
    return frame[["class_id", "geometry"]].reset_index(drop=True)


def rasterize_labels(
    labels: gpd.GeoDataFrame, scene: SceneInfo, out_path: str | Path, *, block: int = 512, instances: bool = False
) -> Path:
    """Burn ``labels`` onto the scene grid as a tiled uint8 GeoTIFF, one block at a time.

    Background is 0; pixels where the scene has no data are :data:`IGNORE`.
    With ``instances`` each polygon burns its own id instead (row number + 1,
    uint32; 0 where there is no polygon or no data), for losses that need to
    tell touching objects apart. Written to a temporary name and renamed when complete.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".partial")
    profile = {
        "driver": "GTiff",
        "height": scene.height,
        "width": scene.width,
        "count": 1,
        "dtype": "uint32" if instances else "uint8",
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": 0 if instances else IGNORE,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
    }
    index = labels.sindex
    with rasterio.open(scene.path) as src, rasterio.open(tmp_path, "w", **profile) as dst:
        for window in iter_blocks(scene.height, scene.width, block):
            hits = np.sort(index.query(box(*window_bounds(window, scene.transform))))  # file order = burn order
            values = hits + 1 if instances else labels.class_id.values[hits]
            shapes = [(geom, int(value)) for geom, value in zip(labels.geometry.values[hits], values, strict=True)]
            out = np.zeros((int(window.height), int(window.width)), profile["dtype"])
            if shapes:
                out = rasterize(
                    shapes,
                    out_shape=out.shape,
                    transform=window_transform(window, scene.transform),
                    fill=0,
                    dtype=profile["dtype"],
                )
            out[~read_valid(src, window)] = 0 if instances else IGNORE
            dst.write(out, 1, window=window)
    os.replace(tmp_path, out_path)
    return out_path
