"""Class polygons one band of chunk rows at a time: bands are independent tasks, their seams joined after.

A band is a run of whole chunk rows across the mosaic, planned from the mosaic's shape alone
(:func:`plan_bands`), so the same mosaic always splits the same way, whatever the worker count.
:func:`vectorize_band` polygonizes the band's chunks and merges their seams
(:class:`~geoseg.vectorize.seams.SeamMerger` started at the band's first row), then parts its
regions in two:

- *finished*: touching neither the band's first row (unless it is the mosaic's) nor its last
  (unless it is the mosaic's): nothing outside the band can join them. They become output
  features in the task, with their GeoJSON already rendered (the costly part of writing);
- *open*: the rest, kept as pixel polygons, with the region of every pixel on the band's top and
  bottom rows. The driver joins them across bands with a second
  :class:`~geoseg.vectorize.seams.SeamMerger` in which each band is one "chunk" (:func:`band_as_chunk`).

Each band's result is written to files in ``parts_dir``; its ``.json`` summary is written last
(temporary name, then renamed), so a killed stage resumes at the first band without one. A
summary whose key (mosaic fingerprint and done-state, band rows, classes, area filter) differs
is not reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.io.pixel_arrays import labels_view
from geoseg.vectorize.band_simplify import inner_points, simplify_band
from geoseg.vectorize.components import first_pixels
from geoseg.vectorize.export import LAYER, areas_m2, pixel_to_map, regions_to_frame, to_wgs84
from geoseg.vectorize.polygonize import ChunkPieces, polygonize_chunk
from geoseg.vectorize.seams import SeamMerger
from geoseg.vectorize.stream import geometry_type, render_geojson

__all__ = [
    "BandRequest",
    "BandSummary",
    "band_as_chunk",
    "band_features",
    "band_geojson",
    "band_open_simplified",
    "band_requests",
    "feature_slices",
    "geojson_slices",
    "plan_bands",
    "vectorize_band",
]

BAND_PIXELS = 16_000_000  # at most this many pixels per band (unless one chunk row is more)
MIN_BANDS = 8  # a mosaic of enough chunk rows splits into at least this many bands, for parallel work
PARTS_VERSION = 2  # bump when a part file's content changes meaning


def plan_bands(height: int, width: int, chunk: int) -> list[tuple[int, int]]:
    """``(first_row, stop_row)`` of each band, in whole chunk rows.

    At most ``BAND_PIXELS`` (but at least one chunk row) and at least ``MIN_BANDS`` bands where the
    mosaic has the rows: a band's memory stays about the same whatever the mosaic's size.
    """
    rows = -(-height // chunk)
    per_band = max(1, min(BAND_PIXELS // (chunk * width), -(-rows // MIN_BANDS)))
    return [(r * chunk, min((r + per_band) * chunk, height)) for r in range(0, rows, per_band)]


@dataclass(frozen=True)
class BandRequest:
    """One band to vectorize: which rows, of which mosaic, with which settings, and where its parts go."""

    mosaic: str
    parts_dir: str
    index: int
    first_row: int
    stop_row: int
    class_ids: tuple[int, ...]
    min_area_m2: float
    key: str  # what the parts are made from; a summary with another key is redone
    instances: bool = False  # keep what the instance numbering needs instead of output features
    labels: str = "labels"  # the class-coded array polygonized (the flood extent: "flood")
    simplify_tolerance: float = 0.0  # map units, the scene's (band_simplify.scene_tolerance); 0: exact pixel edges

    @property
    def stem(self) -> Path:
        return Path(self.parts_dir) / f"band_{self.index:05d}"


@dataclass(frozen=True)
class BandSummary:
    """What a band's task wrote: its finished features (per class) and its open regions."""

    index: int
    key: str
    regions: int  # every region of the band, finished or open
    features: int
    per_class: dict[str, int]
    geojson_rows: int
    declared: str  # GeoJSON geometry type the features were rendered as
    open: int


def _parts_key(
    mosaic: MosaicInfo, class_ids: tuple[int, ...], min_area_m2: float, instances: bool, tolerance: float
) -> str:
    # Another array read as labels (the flood) is keyed by its attributes too: they say what it was made from.
    labels = {} if mosaic.labels_name == "labels" else {"labels": [mosaic.labels_name, dict(mosaic.labels.attrs)]}
    done = np.asarray(mosaic.array("done")[:])
    made_from = {
        "version": PARTS_VERSION,
        "fingerprint": mosaic.fingerprint,
        "done": hashlib.sha256(done.tobytes()).hexdigest(),
        "shape": [mosaic.height, mosaic.width, mosaic.chunk],
        "classes": list(class_ids),
        "min_area_m2": min_area_m2,
        "instances": instances,
        "simplify_tolerance": tolerance,
    } | labels
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()


def band_requests(
    mosaic: MosaicInfo,
    parts_dir: Path,
    class_ids: list[int],
    min_area_m2: float,
    *,
    instances: bool = False,
    simplify_tolerance: float = 0.0,
) -> list[BandRequest]:
    """One request per band of ``mosaic`` (see :func:`plan_bands`)."""
    key = _parts_key(mosaic, tuple(class_ids), min_area_m2, instances, simplify_tolerance)
    # Each band's key names its rows too: parts of another band plan (another geoseg) are not this band's.
    return [
        BandRequest(
            str(mosaic.path),
            str(parts_dir),
            i,
            first,
            stop,
            tuple(class_ids),
            min_area_m2,
            f"{key}:{first}:{stop}",
            instances,
            mosaic.labels_name,
            simplify_tolerance,
        )
        for i, (first, stop) in enumerate(plan_bands(mosaic.height, mosaic.width, mosaic.chunk))
    ]


def read_summary(request: BandRequest) -> BandSummary | None:
    """The band's summary if its parts are complete and made from the same key, else None."""
    path = request.stem.with_suffix(".json")
    try:
        summary = BandSummary(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return summary if summary.key == request.key and summary.index == request.index else None


def vectorize_band(request: BandRequest) -> BandSummary:
    """Polygonize one band, write its finished features and open regions (see the module docstring).

    With ``request.instances`` the finished regions are kept as pixel polygons with each region's
    first pixel, area and class, and the region of every chunk component, for the numbering
    (:mod:`geoseg.vectorize.band_ids`) and its second pass.
    """
    done = read_summary(request)
    if done is not None:
        return done
    mosaic = labels_view(open_mosaic(request.mosaic), request.labels)
    merged = _merge_band(mosaic, request)
    regions, top, bottom = merged.regions, merged.top, merged.bottom
    classes = np.array([0] + [c for c, _ in regions], dtype=np.int64)
    open_ids = np.zeros(len(regions), dtype=bool)
    if request.first_row > 0:
        open_ids[top[top >= 0]] = True
    if request.stop_row < mosaic.height:
        open_ids[bottom[bottom >= 0]] = True
    stem = request.stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    simplified = None
    if request.simplify_tolerance > 0:
        geoms = np.empty(len(regions), dtype=object)
        geoms[:] = [g for _, g in regions]
        simplified = simplify_band(
            geoms, request.first_row, request.stop_row, mosaic.width, mosaic.transform, request.simplify_tolerance
        )
    if request.instances:
        written = _write_region_parts(stem, mosaic, merged, open_ids, simplified)
    else:
        written = _write_feature_parts(stem, mosaic, request, regions, open_ids, simplified)
    _write_open(_tmp(stem, ".open.parquet"), regions, np.flatnonzero(open_ids), simplified)
    with open(_tmp(stem, ".edges.npz"), "wb") as edges:
        np.savez(edges, top=top, top_class=classes[top + 1], bottom=bottom, bottom_class=classes[bottom + 1])
    summary = BandSummary(
        index=request.index, key=request.key, regions=len(regions), open=int(open_ids.sum()), **written
    )
    for suffix in (*PART_SUFFIXES[request.instances], ".open.parquet", ".edges.npz"):
        os.replace(_tmp(stem, suffix), part(stem, suffix))
    _tmp(stem, ".json").write_text(json.dumps(asdict(summary)))
    os.replace(_tmp(stem, ".json"), stem.with_suffix(".json"))
    return summary


PART_SUFFIXES = {False: (".features.parquet", ".geojson.txt"), True: (".regions.npz", ".finished.parquet")}


def part(stem: Path, suffix: str) -> Path:
    """The band's part file with this suffix."""
    return stem.with_name(stem.name + suffix)


def _write_feature_parts(
    stem: Path,
    mosaic: MosaicInfo,
    request: BandRequest,
    regions: list[tuple[int, object]],
    open_ids: np.ndarray,
    simplified: np.ndarray | None,
) -> dict:
    """The finished regions as output features (``simplified``: their map geometries), and their GeoJSON rendered."""
    frame = regions_to_frame(
        [region for region, is_open in zip(regions, open_ids, strict=True) if not is_open],
        transform=mosaic.transform,
        crs=mosaic.crs,
        class_names=mosaic.class_names,
        min_area_m2=request.min_area_m2,
        geoms=None if simplified is None else simplified[~open_ids],
    )
    wgs84 = to_wgs84(frame)
    declared = geometry_type(wgs84)
    geojson = render_geojson(wgs84, LAYER, declared)[1] if len(wgs84) else ""
    frame.to_parquet(_tmp(stem, ".features.parquet"), index=False, row_group_size=FEATURE_SLICE)
    _tmp(stem, ".geojson.txt").write_text(geojson, encoding="utf-8")
    per_class = {str(name): int(count) for name, count in frame["class"].value_counts(sort=False).items()}
    return {"features": len(frame), "per_class": per_class, "geojson_rows": len(wgs84), "declared": declared}


def _write_region_parts(
    stem: Path, mosaic: MosaicInfo, merged: BandMerge, open_ids: np.ndarray, simplified: np.ndarray | None
) -> dict:
    """What the numbering needs: each region's class, first pixel, exact area and openness.

    Also the finished regions' pixel polygons (and ``simplified`` map geometries) and the region of
    every chunk component.
    """
    geoms = np.empty(len(merged.regions), dtype=object)
    geoms[:] = [g for _, g in merged.regions]
    first_row, first_col = first_pixels(geoms)
    areas = areas_m2(pixel_to_map(geoms, mosaic.transform), mosaic.crs) if len(geoms) else np.zeros(0)
    with open(_tmp(stem, ".regions.npz"), "wb") as out:
        np.savez(
            out,
            class_id=np.array([c for c, _ in merged.regions], dtype=np.int32),
            first_row=first_row,
            first_col=first_col,
            area_m2=np.asarray(areas, dtype=np.float64),
            open=open_ids,
            pieces=np.concatenate(merged.pieces) if merged.pieces else np.zeros(0, np.int32),
            counts=np.array([len(p) for p in merged.pieces], dtype=np.int64),
        )
    _write_open(_tmp(stem, ".finished.parquet"), merged.regions, np.flatnonzero(~open_ids), simplified)
    return {"features": 0, "per_class": {}, "geojson_rows": 0, "declared": "Polygon"}


def _tmp(stem: Path, suffix: str) -> Path:
    return stem.with_name(f"{stem.name}{suffix}.partial")


@dataclass(frozen=True)
class BandMerge:
    """A band's merge: its regions in merger order, and where they are.

    ``top``/``bottom``: the region of each pixel on the band's top and bottom rows (-1: none);
    ``pieces``: per chunk (row-major), the region of each of its components (instances only).
    """

    regions: list[tuple[int, object]]
    top: np.ndarray
    bottom: np.ndarray
    pieces: list[np.ndarray]


def _merge_band(mosaic: MosaicInfo, request: BandRequest) -> BandMerge:
    merger = SeamMerger(request.stop_row, mosaic.width, track_pieces=True, first_row=request.first_row)
    regions: list[tuple[int, object]] = []
    edges: dict[str, list[tuple[int, int, np.ndarray]]] = {"top": [], "bottom": []}
    counts: list[int] = []
    last_row = range(request.first_row, request.stop_row, mosaic.chunk)[-1]
    for row_off in range(request.first_row, request.stop_row, mosaic.chunk):
        height = min(mosaic.chunk, request.stop_row - row_off)
        for col_off in range(0, mosaic.width, mosaic.chunk):
            width = min(mosaic.chunk, mosaic.width - col_off)
            rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
            labels, valid = np.asarray(mosaic.labels[rows, cols]), np.asarray(mosaic.valid[rows, cols])
            pieces = polygonize_chunk(labels, valid, row_off, col_off, request.class_ids)
            merger.add(pieces)
            if row_off == request.first_row:
                edges["top"].append((len(counts), pieces.count, pieces.top))
            if row_off == last_row:
                edges["bottom"].append((len(counts), pieces.count, pieces.bottom))
            counts.append(pieces.count)
        regions.extend(merger.end_row())

    def edge(which: str) -> np.ndarray:
        # chunk_regions maps component 0 (no region) to -1, so the edge keeps "none" as -1.
        return np.concatenate([merger.chunk_regions(i, count)[local] for i, count, local in edges[which]])

    components = [merger.chunk_regions(i, count)[1:] for i, count in enumerate(counts)] if request.instances else []
    return BandMerge(regions, edge("top"), edge("bottom"), components)


def _write_open(
    path: Path, regions: list[tuple[int, object]], open_ids: np.ndarray, simplified: np.ndarray | None = None
) -> None:
    """The open regions' pixel polygons; with ``simplified``, also their simplified map geometries and inner points."""
    geoms = np.empty(len(open_ids), dtype=object)
    geoms[:] = [regions[i][1] for i in open_ids]
    columns = {
        "region": pa.array(open_ids, pa.int32()),
        "class_id": pa.array([regions[i][0] for i in open_ids], pa.int32()),
        "wkb": pa.array(shapely.to_wkb(geoms) if len(geoms) else [], pa.binary()),
    }
    if simplified is not None:
        points = inner_points(geoms) if len(geoms) else np.zeros((0, 2))
        columns["x"], columns["y"] = pa.array(points[:, 0]), pa.array(points[:, 1])
        columns["simplified"] = pa.array(shapely.to_wkb(simplified[open_ids]) if len(geoms) else [], pa.binary())
    pq.write_table(pa.table(columns), path)


def band_open_simplified(request: BandRequest) -> tuple[np.ndarray, np.ndarray]:
    """The band's open regions' inner points (n, 2) and simplified map geometries, for ``OpenPieces``."""
    table = pq.read_table(part(request.stem, ".open.parquet"), columns=["x", "y", "simplified"]).to_pydict()
    points = np.column_stack([np.asarray(table["x"], np.float64), np.asarray(table["y"], np.float64)])
    return points, shapely.from_wkb(np.asarray(table["simplified"], dtype=object))


FEATURE_SLICE = 2000  # features per append in the driver: its memory follows this, not a band's width


def band_features(request: BandRequest, empty: gpd.GeoDataFrame) -> Iterator[gpd.GeoDataFrame]:
    """The band's finished features, FEATURE_SLICE rows at a time; columns typed and CRS set as in ``empty``.

    A band spans the mosaic's width, so a whole band's features grow with the scene; slices keep
    the driver's memory flat. (Parquet may hand strings back as Arrow strings: one schema throughout.)
    """
    columns = {name: empty[name].dtype for name in empty.columns if name != empty.geometry.name}
    return feature_slices(part(request.stem, ".features.parquet"), empty, columns)


def feature_slices(path: Path, empty: gpd.GeoDataFrame, columns: dict) -> Iterator[gpd.GeoDataFrame]:
    """The features of a band's GeoParquet part, FEATURE_SLICE rows at a time, ``columns`` typed, CRS of ``empty``."""
    source = pq.ParquetFile(path)
    for batch in source.iter_batches(batch_size=FEATURE_SLICE):
        frame = batch.to_pandas()
        geometry = shapely.from_wkb(frame.pop(empty.geometry.name).to_numpy())
        yield gpd.GeoDataFrame(frame.astype(columns), geometry=geometry, crs=empty.crs)


def band_geojson(request: BandRequest) -> Iterator[tuple[str, int]]:
    """The band's rendered GeoJSON features (one a line, comma-separated), FEATURE_SLICE lines at a time."""
    return geojson_slices(part(request.stem, ".geojson.txt"))


def geojson_slices(path: Path) -> Iterator[tuple[str, int]]:
    """Rendered GeoJSON features, FEATURE_SLICE lines at a time, each piece with its line count.

    Pieces as :func:`~geoseg.vectorize.stream.render_geojson` gives them: comma-separated, none trailing.
    """
    with open(path, encoding="utf-8") as text:
        while lines := list(islice(text, FEATURE_SLICE)):
            yield "".join(lines).removesuffix("\n").removesuffix(","), len(lines)


def band_as_chunk(request: BandRequest, summary: BandSummary, width: int) -> ChunkPieces:
    """The band's open regions as one chunk of the band-level merge (finished regions are left out).

    Components are the open regions renumbered 1..K in region order; the band's top and bottom
    rows name them (0 elsewhere); a band spans the mosaic's width, so it has no left or right seam.
    """
    stem = request.stem
    table = pq.read_table(part(stem, ".open.parquet")).to_pydict()
    with np.load(part(stem, ".edges.npz"), allow_pickle=False) as edges:
        top, bottom = edges["top"], edges["bottom"]
    local = np.zeros(summary.regions + 1, dtype=np.int32)  # band region + 1 -> component (0: finished)
    local[np.asarray(table["region"], dtype=np.int64) + 1] = np.arange(1, len(table["region"]) + 1)
    polygons = [None, *shapely.from_wkb(np.asarray(table["wkb"], dtype=object))] if table["wkb"] else [None]
    return ChunkPieces(
        row_off=request.first_row,
        col_off=0,
        height=request.stop_row - request.first_row,
        width=width,
        classes=np.array([0, *table["class_id"]], dtype=np.int64),
        top=local[top + 1],
        bottom=local[bottom + 1],
        left=np.zeros(0, dtype=np.int32),
        right=np.zeros(0, dtype=np.int32),
        polygons=polygons,
    )
