"""Arrays beside a mosaic's ``labels``: same shape, chunks and georeferencing, their own meaning.

The instance ids (:mod:`geoseg.io.instances`) and the flood extent (:mod:`geoseg.impact.flood`)
are such arrays: a GIS reading ``labels`` through its CF ``grid_mapping``, GDAL's ``_CRS`` or the
``x``/``y`` coordinates reads them the same way.
"""

from __future__ import annotations

from dataclasses import replace

import zarr

from geoseg.io.mosaic import MosaicInfo, _layout, geoseg_attrs, member_array

__all__ = ["create_pixel_array", "labels_view"]

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


def labels_view(mosaic: MosaicInfo, name: str) -> MosaicInfo:
    """The mosaic with the class-coded array ``name`` read as its ``labels``, named by that array's ``class_names``.

    So the vectorizer turns another class array (the flood extent) into polygons the way it does labels.
    """
    if name == mosaic.labels_name:
        return mosaic
    names = member_array(mosaic.group, name).attrs.get("class_names")
    if not isinstance(names, list):
        raise ValueError(f"{mosaic.path}/{name}: has no class_names attribute; it cannot be read as labels")
    return replace(mosaic, labels_name=name, class_names=tuple(str(n) for n in names), _kept={})
