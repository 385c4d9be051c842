"""Training labels: vector features, label rasters and box tables, one or several per scene, onto the scene grid.

A scene's labels are one file or a list of sources (``train.scenes[i].labels``), each read as:
vector features (polygons; lines and points grown by ``buffer_m``), a label raster (values named
through a table, :mod:`geoseg.io.label_rasters`) or a box table (:mod:`geoseg.io.box_tables`).
Features and boxes become polygons in the scene CRS; a label raster is kept as a reference and
read window by window when the labels are rasterized. Where sources overlap, later ones paint
over earlier ones. Every problem of every source is reported at once, one line each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
from rasterio.features import rasterize
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform
from shapely.geometry import box

from geoseg.config.label_values import label_kind, label_text, label_words
from geoseg.config.locations import as_location, is_uri
from geoseg.config.schema import TrainSpec
from geoseg.config.train_spec import LabelSource
from geoseg.errors import InputVectorError
from geoseg.io.box_tables import BOX_FIELD, read_box_table
from geoseg.io.label_geometry import needs_width, no_overlap, with_width
from geoseg.io.label_rasters import IGNORE, LabelRaster, load_label_raster
from geoseg.io.raster import SceneInfo, iter_blocks, read_valid

__all__ = ["IGNORE", "label_options", "label_rasters", "load_labels", "rasterize_labels"]

_RASTERS = "geoseg_label_rasters"  # GeoDataFrame.attrs key: the label rasters painted among the polygons


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
        options.update(label_map=pair.label_map, label_class=pair.label_class, box_coords=pair.box_coords)
        options["field"] = pair.label_field or train.label_field
        options["box_field"] = pair.label_field or BOX_FIELD
    return options


@dataclass(frozen=True)
class _Naming:
    """How one source names classes (its own options, or the scene's for a single file)."""

    column: str  # of the class attribute
    label_map: Mapping[str, str] = field(default_factory=dict)
    label_class: str | None = None
    box_coords: Literal["pixel", "map"] | None = None


@dataclass(frozen=True)
class _Target:
    """What every source of a scene is checked against."""

    scene: SceneInfo
    classes: list[str]
    ignore: tuple[str, ...]
    buffer_m: Mapping[str, float]


def load_labels(
    path: str | Path | Sequence[LabelSource],
    *,
    scene: SceneInfo,
    classes: list[str],
    field: str,
    source: str = "labels",
    ignore: list[str] | tuple[str, ...] = (),
    label_map: Mapping[str, str] | None = None,
    label_class: str | None = None,
    buffer_m: Mapping[str, float] | None = None,
    box_coords: Literal["pixel", "map"] | None = None,
    box_field: str = BOX_FIELD,
) -> gpd.GeoDataFrame:
    """Read label sources, check them against the scene and classes, return polygons in the scene CRS.

    ``path`` is one label file (vector features, a label raster or a box table, by its suffix), or a
    list of :class:`~geoseg.config.train_spec.LabelSource`, each with its own options (a source
    without ``label_field`` reads ``field``, or ``box_field`` for a box table).

    The class of a feature is ``label_class`` when given, else its ``field`` value read as text
    (:func:`~geoseg.config.label_values.label_text`) and looked up in ``label_map`` (values not in
    it are class names themselves). Features whose class is in ``ignore`` are left out; any other
    unknown class name is an error. Lines and points become areas ``buffer_m[class]`` metres on
    either side; without one they are an error. Every problem of every source is reported at once,
    one line each. The result keeps the sources' and files' order (later features are burned over
    earlier ones) and has an integer ``class_id`` column; label rasters ride along in its ``attrs``
    (:func:`label_rasters`), with a ``layer`` column placing the polygons among them.
    """
    target = _Target(scene, list(classes), tuple(ignore), dict(buffer_m or {}))
    if isinstance(path, (str, os.PathLike)):
        naming = _Naming(box_field if label_kind(path) == "boxes" else field, label_map or {}, label_class, box_coords)
        return _combine([_load_source(as_location(path), naming, target, source)], scene)
    layers: list[gpd.GeoDataFrame | LabelRaster] = []
    problems: list[str] = []
    for i, item in enumerate(path):
        kind_field = box_field if label_kind(item.path) == "boxes" else field
        naming = _Naming(item.label_field or kind_field, item.label_map, item.label_class, item.box_coords)
        try:
            layers.append(_load_source(item.path, naming, target, f"{source}[{i}]"))
        except InputVectorError as exc:  # gather every source's problems before raising
            problems += getattr(exc, "problems", None) or [str(exc)]
    if problems:
        raise _problems(problems)
    return _combine(layers, scene)


def label_rasters(labels: gpd.GeoDataFrame) -> tuple[LabelRaster, ...]:
    """The label rasters :func:`load_labels` found among a scene's sources, in paint order."""
    return labels.attrs.get(_RASTERS, ())


def _problems(lines: list[str]) -> InputVectorError:
    error = InputVectorError("\n".join(lines))
    error.problems = lines  # type: ignore[attr-defined]  # one line each, for callers listing them
    return error


def _load_source(path, naming: _Naming, target: _Target, source: str) -> gpd.GeoDataFrame | LabelRaster:
    """One source: polygons (class_id, geometry) in the scene CRS, or a checked label raster."""
    where = f"{path}: {source}"
    if label_kind(path) == "raster":
        raster, problems = load_label_raster(
            path,
            scene=target.scene,
            classes=target.classes,
            where=where,
            label_map=naming.label_map,
            ignore=target.ignore,
        )
        if raster is None:
            raise _problems(problems)
        return raster
    return _load_features(path, naming, target, where)


def _combine(layers: list[gpd.GeoDataFrame | LabelRaster], scene: SceneInfo) -> gpd.GeoDataFrame:
    """The sources' polygons in paint order; label rasters (and each polygon's source) when there are any."""
    frames = [layer.assign(layer=i) for i, layer in enumerate(layers) if isinstance(layer, gpd.GeoDataFrame)]
    rasters = tuple(replace(layer, layer=i) for i, layer in enumerate(layers) if isinstance(layer, LabelRaster))
    if frames:
        frame = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=scene.crs)
    else:
        frame = gpd.GeoDataFrame(
            {"class_id": np.zeros(0, "uint8"), "layer": np.zeros(0, int)}, geometry=[], crs=scene.crs
        )
    if not rasters:
        return frame[["class_id", "geometry"]]
    frame = frame[["class_id", "layer", "geometry"]]
    frame.attrs[_RASTERS] = rasters
    return frame


def _load_features(path, naming: _Naming, target: _Target, where: str) -> gpd.GeoDataFrame:
    """Vector features or boxes of one file as polygons (class_id, geometry) in the scene CRS."""
    scene, classes = target.scene, target.classes
    problems: list[str] = []
    if label_kind(path) == "boxes":
        assert naming.box_coords in ("pixel", "map"), "the job schema requires box_coords for a box table"
        frame, problems = read_box_table(path, scene=scene, where=where, box_coords=naming.box_coords)
    else:
        frame = _read(path, where)
    names = _class_names(frame, where, naming, problems)
    if frame.crs is None:
        problems.append(f"{where}: labels have no CRS; save them with one (QGIS: Export > Save Features As)")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if names is not None:
        names = names[frame.index]
        kept = ~names.isin(list(target.ignore))
        frame, names = frame[kept], names[kept]
        unknown = sorted(set(names) - set(classes))
        if unknown:
            problems.append(
                f"{where}: class names {unknown!r} are not in the job's classes {classes!r}; "
                "add them to `classes:` or `train.ignore_classes:`, map them with label_map, or fix the labels"
            )
        problems += _arealess(frame, names, classes, target.buffer_m, where)
    if frame.crs is not None and (label_kind(path) == "vector" or not problems):  # boxes: outside ones counted
        native_crs, native_bounds = frame.crs, frame.total_bounds
        if frame.crs != scene.crs:
            frame = frame.to_crs(scene.crs)  # reproject, never silently misalign
        problems += no_overlap(frame, native_crs, native_bounds, scene, where)
    if problems:
        raise _problems(problems)
    assert names is not None  # a missing class field is a problem above
    frame = frame.assign(class_id=names.map({name: i for i, name in enumerate(classes)}).astype("uint8"))
    frame = with_width(frame, names, target.buffer_m)
    return frame[["class_id", "geometry"]].reset_index(drop=True)


def _read(path, where: str) -> gpd.GeoDataFrame:
    if not path.exists():  # an object-storage URI is checked by opening it
        raise InputVectorError(f"{where}: file not found; check the path in the job file")
    try:
        return gpd.read_file(str(path))
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as exc:
        hint = (
            "; check the URI, and the credentials and endpoint in the environment (AWS_* variables)"
            if is_uri(path)
            else ""
        )
        raise InputVectorError(f"{where}: not a readable vector file ({exc}){hint}") from None


def _class_names(frame: gpd.GeoDataFrame, where: str, naming: _Naming, problems: list[str]) -> pd.Series | None:
    """Each feature's class name (None, with a problem, when the field is missing)."""
    if naming.label_class is not None:
        return pd.Series(naming.label_class, index=frame.index, dtype=object)
    if naming.column not in frame.columns:
        problems.append(
            f"{where}: no attribute {naming.column!r} (has {[c for c in frame.columns if c != 'geometry']!r}); "
            "set label_field (train.label_field, or the scene's or source's) to the column holding class names, "
            "or label_class: <name> on the scene (or source) when every feature is one class"
        )
        return None
    label_map = naming.label_map
    booleans = {word: name for key, name in label_map.items() for word in label_words(key)}

    def name_of(value: object) -> str:
        text = label_text(value)
        return label_map[text] if text in label_map else booleans.get(text.lower(), text)

    return frame[naming.column].map(name_of).astype(object)


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

    Background is 0; pixels where the scene has no data are :data:`IGNORE`. Polygons burn in
    their order and label rasters (:func:`label_rasters`) paint in their place among them.
    With ``instances`` each polygon burns its own id instead (row number + 1,
    uint32; 0 where there is no polygon or no data; label rasters hold no
    objects and paint nothing), for losses that need to tell touching objects
    apart. Written to a temporary name and renamed when complete.
    """
    rasters = () if instances else label_rasters(labels)  # a class raster holds no objects (preflight says so)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".partial")
    dtype = "uint32" if instances else "uint8"
    profile = {
        "driver": "GTiff",
        "height": scene.height,
        "width": scene.width,
        "count": 1,
        "dtype": dtype,
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": 0 if instances else IGNORE,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
    }
    index = labels.sindex
    with ExitStack() as stack:
        src = stack.enter_context(rasterio.open(scene.path))
        dst = stack.enter_context(rasterio.open(tmp_path, "w", **profile))
        painters = [(raster, stack.enter_context(raster.reader(scene))) for raster in rasters]
        for window in iter_blocks(scene.height, scene.width, block):
            hits = np.sort(index.query(box(*window_bounds(window, scene.transform))))  # file order = burn order
            out = np.zeros((int(window.height), int(window.width)), dtype)
            for step in _paint_steps(labels, hits, painters):
                if isinstance(step, np.ndarray):
                    _burn(out, labels, step, window_transform(window, scene.transform), instances)
                else:
                    step[0].paint(out, step[1], window)
            out[~read_valid(src, window)] = 0 if instances else IGNORE
            dst.write(out, 1, window=window)
    os.replace(tmp_path, out_path)
    return out_path


def _paint_steps(labels: gpd.GeoDataFrame, hits: np.ndarray, painters: list) -> Iterator:
    """Polygons (row numbers) and label rasters (with their readers) of one block, in paint order."""
    if not painters:
        yield hits
        return
    layers = labels["layer"].to_numpy()[hits]  # non-decreasing: the rows are in source order
    start = 0
    for painter in painters:
        stop = int(np.searchsorted(layers, painter[0].layer))
        yield hits[start:stop]
        yield painter
        start = stop
    yield hits[start:]


def _burn(out: np.ndarray, labels: gpd.GeoDataFrame, rows: np.ndarray, transform, instances: bool) -> None:
    """Burn polygons ``rows`` over ``out``: their class, or with ``instances`` their row number + 1."""
    if not len(rows):
        return
    values = rows + 1 if instances else labels.class_id.to_numpy()[rows]
    shapes = [(geom, int(value)) for geom, value in zip(labels.geometry.values[rows], values, strict=True)]
    rasterize(shapes, out=out, transform=transform)
