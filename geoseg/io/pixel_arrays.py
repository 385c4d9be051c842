"""Arrays beside a mosaic's ``labels``: same shape, chunks and georeferencing, their own meaning.

The instance ids (:mod:`geoseg.io.instances`) and the flood extent (:mod:`geoseg.impact.flood`)
are such arrays: a GIS reading ``labels`` through its CF ``grid_mapping``, GDAL's ``_CRS`` or the
``x``/``y`` coordinates reads them the same way.
"""

from __future__ import annotations

import zarr

from geoseg.io.mosaic import MosaicInfo, _layout, geoseg_attrs

__all__ = ["create_pixel_array"]

_LABEL_MEANING = ("flag_values", "flag_meanings", "class_names", "long_name")  # what says what labels hold


def create_pixel_array(mosaic: MosaicInfo, name: str, *, dtype: str, fill_value: int, meaning: dict) -> zarr.Array:
    """Add (or replace) the empty array ``name`` beside ``labels``, with its georeferencing and ``meaning`` attrs."""
    zarr_format = int(geoseg_attrs(mosaic.group).get("zarr_format", 2))
    if name in mosaic.group:
        del mosaic.group[name]
    array = mosaic.group.create_array(
        name,
        shape=(mosaic.height, mosaic.width),
        dtype=dtype,
        fill_value=fill_value,
        dimension_names=["y", "x"] if zarr_format == 3 else None,
        **_layout(mosaic.chunk, zarr_format),
    )
    attrs = {key: value for key, value in mosaic.labels.attrs.items() if key not in _LABEL_MEANING}
    array.attrs.update(attrs | meaning)
    return array
