"""Label polygons: validate, bring into the scene's CRS, rasterize block by block."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
from rasterio.features import rasterize
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform
from shapely.geometry import box

from geoseg.config.label_values import label_text, label_words
from geoseg.config.locations import as_location, is_uri
from geoseg.config.schema import TrainSpec
from geoseg.errors import InputVectorError
from geoseg.io.label_geometry import needs_width, no_overlap, with_width
from geoseg.io.raster import SceneInfo, iter_blocks, read_valid

__all__ = ["IGNORE", "label_options", "load_labels", "rasterize_labels"]

IGNORE = 255  # label value for pixels without data; losses and metrics skip it


def label_options(train: TrainSpec | None, scene: int | None = None) -> dict[str, Any]:
    """The :func:`load_labels` keywords a job gives the labels of ``train.scenes[scene]``.

    ``scene=None`` is for labels outside ``train.scenes`` (``evaluate.labels``): the job-wide
    ``train.label_field``, ``ignore_classes`` and ``buffer_m`` only.
    """
    if train is None:
        return {"field": "class"}
    options: dict[str, Any] = {"field": train.label_field, "ignore": train.ignore_classes, "buffer_m": train.buffer_m}
    if scene is not None:
        pair = train.scenes[scene]
        options.update(label_map=pair.label_map, label_class=pair.label_class)
        options["field"] = pair.label_field or train.label_field
    return options


def load_labels(
    path: str | Path,
    *,
    scene: SceneInfo,
    classes: list[str],
    field: str,
    source: str = "labels",
    ignore: list[str] | tuple[str, ...] = (),
    label_map: Mapping[str, str] | None = None,
    label_class: str | None = None,
    buffer_m: Mapping[str, float] | None = None,
) -> gpd.GeoDataFrame:
    """Read label features, check them against the scene and classes, return polygons in the scene CRS.

    The class of a feature is ``label_class`` when given, else its ``field`` value read as text
    (:func:`~geoseg.config.label_values.label_text`) and looked up in ``label_map`` (values not in
    it are class names themselves). Features whose class is in ``ignore`` are left out; any other
    unknown class name is an error. Lines and points become areas ``buffer_m[class]`` metres on
    either side; without one they are an error. Every problem is reported at once, one line each.
    The result keeps the file order (later features are burned over earlier ones) and has an
    integer ``class_id`` column.
    """
    path = as_location(path)
    frame = _read(path, source)
    where = f"{path}: {source}"
    problems: list[str] = []
    names = _class_names(frame, where, field, label_map or {}, label_class, problems)
    if frame.crs is None:
        problems.append(f"{where}: labels have no CRS; save them with one (QGIS: Export > Save Features As)")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if names is not None:
        names = names[frame.index]
        kept = ~names.isin(list(ignore))
        frame, names = frame[kept], names[kept]
        unknown = sorted(set(names) - set(classes))
        if unknown:
            problems.append(
                f"{where}: class names {unknown!r} are not in the job's classes {classes!r}; "
                "add them to `classes:` or `train.ignore_classes:`, map them with label_map, or fix the labels"
            )
        problems += _arealess(frame, names, classes, buffer_m or {}, where)
    if frame.crs is not None:
        native_crs, native_bounds = frame.crs, frame.total_bounds
        if frame.crs != scene.crs:
            frame = frame.to_crs(scene.crs)  # reproject, never silently misalign
        problems += no_overlap(frame, native_crs, native_bounds, scene, where)
    if problems:
        error = InputVectorError("\n".join(problems))
        error.problems = problems  # type: ignore[attr-defined]  # one line each, for callers listing them
        raise error
    assert names is not None  # a missing class field is a problem above
    frame = frame.assign(class_id=names.map({name: i for i, name in enumerate(classes)}).astype("uint8"))
    frame = with_width(frame, names, buffer_m or {})
    return frame[["class_id", "geometry"]].reset_index(drop=True)


def _read(path, source: str) -> gpd.GeoDataFrame:
    if not path.exists():  # an object-storage URI is checked by opening it
        raise InputVectorError(f"{path}: {source}: file not found; check the path in the job file")
    try:
        return gpd.read_file(str(path))
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as exc:
        hint = (
            "; check the URI, and the credentials and endpoint in the environment (AWS_* variables)"
            if is_uri(path)
            else ""
        )
        raise InputVectorError(f"{path}: {source}: not a readable vector file ({exc}){hint}") from None


def _class_names(
    frame: gpd.GeoDataFrame,
    where: str,
    field: str,
    label_map: Mapping[str, str],
    label_class: str | None,
    problems: list[str],
) -> pd.Series | None:
    """Each feature's class name (None, with a problem, when the field is missing)."""
    if label_class is not None:
        return pd.Series(label_class, index=frame.index, dtype=object)
    if field not in frame.columns:
        problems.append(
            f"{where}: no attribute {field!r} (has {[c for c in frame.columns if c != 'geometry']!r}); "
            "set label_field (train.label_field, or the scene's) to the column holding class names, "
            "or label_class: <name> on the scene when every feature is one class"
        )
        return None
    booleans = {word: name for key, name in label_map.items() for word in label_words(key)}

    def name_of(value: object) -> str:
        text = label_text(value)
        return label_map[text] if text in label_map else booleans.get(text.lower(), text)

    return frame[field].map(name_of).astype(object)


def _arealess(
    frame: gpd.GeoDataFrame, names: pd.Series, classes: list[str], buffer_m: Mapping[str, float], where: str
) -> list[str]:
    """One line per (geometry type, known class) of lines and points that no ``buffer_m`` gives a width."""
    arealess = frame[needs_width(frame) & names.isin([c for c in classes if c not in buffer_m]).to_numpy()]
    counts = pd.DataFrame({"kind": arealess.geom_type, "name": names[arealess.index]}).value_counts(sort=False)
    return [
        f"{where}: {int(n)} {kind} feature(s) of class {name!r} have no area; give them a width with "
        f"train.buffer_m: {{{name}: 3.0}} (half-width in metres)"
        for (kind, name), n in sorted(counts.items())
    ]


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
