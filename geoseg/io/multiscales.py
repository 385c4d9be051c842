"""The overview pyramid's metadata: each level's pixel-centre coordinates and the ``multiscales`` attribute.

Kept apart from the pyramid's pixels (:mod:`geoseg.io.overviews`): readers such
as xarray and GDAL find the levels through this metadata.
"""

from __future__ import annotations

import numpy as np
import zarr
from affine import Affine

from geoseg.io.mosaic import DATA_ARRAYS, MosaicInfo

__all__ = ["OVERVIEWS_GROUP", "centre_transforms", "level_shape", "multiscales", "write_coords"]

OVERVIEWS_GROUP = "overviews"


def level_shape(height: int, width: int, level: int) -> tuple[int, int]:
    f = 2**level
    return -(-height // f), -(-width // f)


def write_coords(
    group: zarr.Group,
    transform: Affine,
    height: int,
    width: int,
    crs_units: str,
    zarr_format: int,
    base_ref_attrs: dict,
) -> None:
    """x/y pixel-centre coordinates and a spatial_ref, so the level is a georeferenced dataset of its own."""
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    for name, values in (("x", x), ("y", y)):
        coord = group.create_array(
            name,
            shape=values.shape,
            chunks=values.shape,
            dtype="float64",
            dimension_names=[name] if zarr_format == 3 else None,
        )
        coord[:] = values
        coord.attrs.update({"units": crs_units, "standard_name": f"projection_{name}_coordinate"})
        if zarr_format == 2:
            coord.attrs["_ARRAY_DIMENSIONS"] = [name]
    ref = group.create_array("spatial_ref", shape=(), dtype="int32", dimension_names=[] if zarr_format == 3 else None)
    ref[...] = 0
    attrs = dict(base_ref_attrs)
    attrs["GeoTransform"] = " ".join(repr(float(v)) for v in transform.to_gdal())
    ref.attrs.update(attrs)


def centre_transforms(transform: Affine, factor: int) -> list[dict]:
    # OME-NGFF maps array indices to coordinates of pixel *centres* (as the x/y
    # arrays do): scale is the signed pixel size (negative in y for north-up),
    # translation the centre of pixel (0, 0).
    t = transform @ Affine.scale(factor)
    return [
        {"type": "scale", "scale": [t.e, t.a]},
        {"type": "translation", "translation": [t.f + t.e / 2, t.c + t.a / 2]},
    ]


def multiscales(mosaic: MosaicInfo, factors: list[int], method: str) -> list[dict]:
    unit = "metre" if mosaic.crs.is_projected else "degree"
    entries = []
    for name in DATA_ARRAYS:
        datasets = [
            {
                "path": name,
                "factor": 1,
                "transform": list(mosaic.transform.to_gdal()),
                "shape": [mosaic.height, mosaic.width],
                "coordinateTransformations": centre_transforms(mosaic.transform, 1),
            }
        ]
        for f in factors:
            datasets.append(
                {
                    "path": f"{OVERVIEWS_GROUP}/{f}/{name}",
                    "factor": f,
                    "transform": list((mosaic.transform @ Affine.scale(f)).to_gdal()),
                    "shape": list(level_shape(mosaic.height, mosaic.width, f.bit_length() - 1)),
                    "coordinateTransformations": centre_transforms(mosaic.transform, f),
                }
            )
        entries.append(
            {
                "version": "0.4",
                "name": name,
                "axes": [{"name": "y", "type": "space", "unit": unit}, {"name": "x", "type": "space", "unit": unit}],
                "datasets": datasets,
                "type": "mode" if name == "labels" else "max",
                "metadata": {
                    "description": "labels: mode of the valid classes per block (ties to the lowest class, "
                    "0 where none valid); valid: 1 if any pixel of the block is valid",
                    "method": method,
                    "crs_wkt": mosaic.crs.to_wkt(),
                },
            }
        )
    return entries
