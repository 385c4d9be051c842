"""A band's numbered features appended in id order, a slice at a time (``vectorize.instances`` by bands).

The band's task numbered its finished regions and rendered their GeoJSON, in id order
(``.numbered.parquet`` / ``.numbered.txt``); the regions joined across band seams whose first pixel
lies in this band (few: only what crossed a seam) are read from the parts of the bands they span.
Both are merged by id, :data:`~geoseg.vectorize.bands.FEATURE_SLICE` of the band's rows at a time:
a band spans the mosaic's width, so the driver's memory follows the slice, not the scene. Where the
band's ids are not in order (a row that matched no region, id 0) or its GeoJSON lines do not pair
with its rows (a geometry lost in reprojection), the band is merged whole and rendered here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from geoseg.io.mosaic import MosaicInfo
from geoseg.vectorize.bands import BandRequest, feature_slices, geojson_slices, part
from geoseg.vectorize.components import with_ids
from geoseg.vectorize.export import LAYER, regions_to_frame, to_wgs84
from geoseg.vectorize.stream import VectorWriter, feature_lines, geometry_type, render_geojson

__all__ = ["numbered_frame", "simplified_geoms", "write_band"]


def numbered_frame(
    mosaic: MosaicInfo, regions: list[tuple[int, object]], ids: np.ndarray, geoms: np.ndarray | None = None
) -> gpd.GeoDataFrame:
    """Features of ``regions`` (in id order) with their ``ids`` as the first column; ``geoms``: simplified."""
    frame = regions_to_frame(
        regions, transform=mosaic.transform, crs=mosaic.crs, class_names=mosaic.class_names, geoms=geoms
    )
    frame = with_ids(frame, regions, mosaic.transform)  # 1..n by position (0 if a row matched none)
    position = frame["id"].to_numpy(np.int64)
    frame["id"] = np.where(position > 0, np.r_[0, ids][position], 0).astype(np.uint32)
    return frame


def write_band(
    writer: VectorWriter, mosaic: MosaicInfo, request: BandRequest, sources: list[Path], *, declared: str, rows: int
) -> Counter[str]:
    """Append the band's finished features and the joined regions it is home to, in id order; their classes.

    ``declared``, ``rows``: the type and line count of the GeoJSON the band's task rendered.
    """
    stem = request.stem
    frames = feature_slices(part(stem, ".numbered.parquet"), writer.empty, {"class": object})
    texts = geojson_slices(part(stem, ".numbered.txt"))
    joined = _joined_features(mosaic, sources, request.index, Path(request.parts_dir)) if sources else None
    counts: Counter[str] = Counter()
    if joined is None or not len(joined):  # the band's own features, as its task wrote them
        for frame in frames:
            writer.write_features(frame)
            counts.update(frame["class"])
        for text, lines in texts:
            writer.write_geojson(text, declared, lines)
        return counts
    ids = pq.read_table(part(stem, ".numbered.parquet"), columns=["id"])["id"].to_numpy().astype(np.int64)
    joined84 = to_wgs84(joined)
    if rows != len(ids) or len(joined84) != len(joined) or (np.diff(ids) < 0).any():
        batches = _whole_band(frames, joined)
    else:
        batches = _merged_slices(frames, texts, ids, joined, joined84, declared)
    for batch, text, kind, count in batches:
        writer.write_rendered(batch, text, kind, count)
        counts.update(batch["class"])
    return counts


def _merged_slices(frames, texts, ids: np.ndarray, joined, joined84, declared: str) -> Iterator[tuple]:
    """Each slice of the band's rows with the joined regions whose ids fall among them, sorted by id.

    Stable as a sort of the whole band would be: a joined id goes after the band's rows below or
    equal to it (``side="right"``); the last slice takes those above every band id.
    """
    kind = geometry_type(joined84)
    joined_lines = np.asarray(render_geojson(joined84, LAYER, kind)[1].split(",\n"), dtype=object)
    joined_ids = joined["id"].to_numpy().astype(np.int64)
    where = np.searchsorted(ids, joined_ids, side="right")
    start = 0
    for frame, (text, rows) in zip(frames, texts, strict=True):
        assert rows == len(frame), "a band's parts are written in slices of FEATURE_SLICE rows and lines"
        stop = start + len(frame)
        take = (where >= start) & ((where < stop) | (stop == len(ids)))
        yield _sorted_slice(frame, text, declared, rows, joined.iloc[np.flatnonzero(take)], joined_lines[take], kind)
        start = stop
    if not len(ids):
        yield joined, ",\n".join(joined_lines), kind, len(joined_lines)


def _sorted_slice(frame, text, declared, rows, extra, extra_lines, kind) -> tuple:
    if not len(extra):
        return frame, text, declared, rows
    batch = pd.concat([frame, extra], ignore_index=True)
    order = np.argsort(batch["id"].to_numpy(), kind="stable")
    lines, declared = feature_lines([(text, declared, rows), (",\n".join(extra_lines), kind, len(extra_lines))])
    batch = gpd.GeoDataFrame(batch.iloc[order], geometry="geometry", crs=frame.crs)
    return batch, ",\n".join(np.asarray(lines, dtype=object)[order]), declared, len(order)


def _whole_band(frames, joined) -> Iterator[tuple]:
    """The band merged whole and rendered here: its lines do not pair with its rows, or its ids are out of order."""
    batch = pd.concat([*frames, joined], ignore_index=True)
    order = np.argsort(batch["id"].to_numpy(), kind="stable")
    batch = gpd.GeoDataFrame(batch.iloc[order], geometry="geometry", crs=joined.crs)
    all84 = to_wgs84(batch)
    declared = geometry_type(all84)
    yield batch, render_geojson(all84, LAYER, declared)[1], declared, len(all84)


def _joined_features(mosaic: MosaicInfo, sources: list[Path], home: int, parts_dir: Path) -> gpd.GeoDataFrame:
    """The joined regions whose first pixel lies in band ``home``, as numbered features in id order."""
    joined_ids = np.load(parts_dir / "joined-ids.npy", allow_pickle=False)
    parts = [pq.read_table(part(stem, ".joined.parquet"), filters=[("home", "=", home)]) for stem in sources]
    table = pa.concat_tables(parts).to_pydict()
    ids = joined_ids[np.asarray(table["seq"], dtype=np.int64)]
    order = np.argsort(ids, kind="stable")[np.sort(ids) > 0]
    geoms = shapely.from_wkb(np.asarray(table["wkb"], dtype=object)[order]) if len(order) else []
    regions = list(zip(np.asarray(table["class_id"])[order].tolist(), geoms, strict=True))
    return numbered_frame(mosaic, regions, ids[order], simplified_geoms(table, order))


def simplified_geoms(table: dict, order: np.ndarray) -> np.ndarray | None:
    """The ``simplified`` column of a band part read as a dict, in ``order``; None when the run does not simplify."""
    if "simplified" not in table:
        return None
    return shapely.from_wkb(np.asarray(table["simplified"], dtype=object)[order]) if len(order) else np.empty(0, object)
