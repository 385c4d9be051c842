"""Streamed vector outputs: features are appended batch by batch as the vectorizer finishes them.

:class:`VectorWriter` holds open one GeoPackage (or GeoParquet) in the mosaic CRS and one GeoJSON in
EPSG:4326 under hidden partial names, appends each batch (one GeoPackage transaction, one Parquet
row group, one block of GeoJSON features) and renames both only when :meth:`VectorWriter.close`
succeeds; a failure removes both partials. The files read back as the one-shot writer's would:
same layer, schema, CRS and declared geometry type (MultiPolygon only if some feature is one: the
rows already written are then promoted once, batch by batch), and GeoParquet ``geo`` metadata as
geopandas writes it (geometry types and bbox of the whole file, set at close).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
from geopandas.io.arrow import _geopandas_to_arrow

from geoseg.errors import StageError
from geoseg.vectorize.geojson_text import collection_header, render_features, renders_here

__all__ = ["VectorWriter", "feature_lines", "geometry_type", "render_geojson"]

_GEOJSON_TAIL = "\n]\n}\n"
_PROMOTE_ROWS = 50_000  # rows per slice when an existing GeoPackage layer is promoted to MultiPolygon


def partial_name(final: Path) -> Path:
    """Hidden and marked partial: nothing that opens out_dir mistakes it for output."""
    return final.with_name(f".{final.stem}.partial{final.suffix}")


def remove_partial(partial: Path) -> None:
    for path in (partial, Path(f"{partial}-journal"), Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        path.unlink(missing_ok=True)


def geometry_type(frame: gpd.GeoDataFrame) -> str:
    # One declared type per layer (the GeoPackage spec wants it): Polygon unless
    # some region really is several disjoint parts.
    return "MultiPolygon" if (frame.geom_type == "MultiPolygon").any() else "Polygon"


def _gdal_write(frame: gpd.GeoDataFrame, target, driver: str, layer: str, declared: str, **options) -> None:
    with warnings.catch_warnings():
        # pyogrio warns that an empty frame's geometry type is guessed; we set it.
        warnings.filterwarnings("ignore", message=".*geometry type.*", category=UserWarning)
        pyogrio.write_dataframe(
            frame,
            target,
            layer=layer,
            driver=driver,
            geometry_type=declared,
            promote_to_multi=declared == "MultiPolygon",
            **options,
        )


def render_geojson(batch: gpd.GeoDataFrame, layer: str, declared: str) -> tuple[str, str]:
    """The RFC 7946 GeoJSON of ``batch`` (EPSG:4326), split into the FeatureCollection's header and its features.

    The features come one a line, comma-separated, with no trailing newline: a piece that
    :class:`VectorWriter` can splice in (so a band's features can be rendered where they are made).
    GEOS renders them in GDAL's layout (:mod:`geoseg.vectorize.geojson_text`, ten times faster);
    what only GDAL's writer renders right goes through it.
    """
    if renders_here(batch):
        features = render_features(batch)
        if declared == "MultiPolygon" and features:
            features = ",\n".join(promote_lines(features.split(",\n")))
        return collection_header(layer), features
    return gdal_geojson(batch, layer, declared)


def gdal_geojson(batch: gpd.GeoDataFrame, layer: str, declared: str) -> tuple[str, str]:
    """:func:`render_geojson` by GDAL's own GeoJSON writer."""
    buffer = io.BytesIO()
    # RFC7946=YES: WGS84 lon/lat, right-hand winding, 7 decimals (~1 cm).
    _gdal_write(batch, buffer, "GeoJSON", layer, declared, layer_options={"RFC7946": "YES"})
    text = buffer.getvalue().decode("utf-8")
    cut = text.index('"features": [\n') + len('"features": [\n')
    return text[:cut], text[cut : len(text) - len(_GEOJSON_TAIL)]


class _GpkgStream:
    """A GeoPackage layer appended one transaction per batch."""

    def __init__(self, partial: Path, layer: str) -> None:
        self.partial, self.layer, self.declared, self.rows = partial, layer, "Polygon", 0

    def write(self, batch: gpd.GeoDataFrame) -> None:
        if self.rows and self.declared == "Polygon" and geometry_type(batch) == "MultiPolygon":
            self._promote()
        if not self.rows:
            self.declared = geometry_type(batch)
        # GeoPackage 1.2: GDAL >= 3.7 writes 1.4 by default, which Debian's GDAL 3.6
        # (and so older QGIS) opens only with a "partially supported" warning.
        first = {"dataset_options": {"VERSION": "1.2"}} if not self.rows else {"append": True}
        _gdal_write(batch, self.partial, "GPKG", self.layer, self.declared, **first)
        self.rows += len(batch)

    def _promote(self) -> None:
        """Rewrite the rows so far as MultiPolygon, slice by slice (happens at most once)."""
        promoted = self.partial.with_name(f".promote{self.partial.name}")
        remove_partial(promoted)
        try:
            for start in range(0, self.rows, _PROMOTE_ROWS):
                rows = pyogrio.read_dataframe(
                    self.partial, layer=self.layer, skip_features=start, max_features=_PROMOTE_ROWS
                )
                first = {"dataset_options": {"VERSION": "1.2"}} if start == 0 else {"append": True}
                _gdal_write(rows, promoted, "GPKG", self.layer, "MultiPolygon", **first)
            remove_partial(self.partial)
            os.replace(promoted, self.partial)
        finally:
            remove_partial(promoted)
        self.declared = "MultiPolygon"

    def close(self, empty: gpd.GeoDataFrame) -> None:
        if not self.rows:
            _gdal_write(empty, self.partial, "GPKG", self.layer, "Polygon", dataset_options={"VERSION": "1.2"})


class _GeoJsonStream:
    """An RFC 7946 FeatureCollection, written by GDAL batch by batch and spliced into one file."""

    def __init__(self, partial: Path, layer: str) -> None:
        self.partial, self.layer, self.declared, self.rows = partial, layer, "Polygon", 0
        self.file = open(partial, "w", encoding="utf-8")  # noqa: SIM115 - held open across batches
        self.header: str | None = None

    def _render(self, batch: gpd.GeoDataFrame, declared: str) -> tuple[str, str]:
        return render_geojson(batch, self.layer, declared)

    def write(self, batch: gpd.GeoDataFrame) -> None:
        if self.rows and self.declared == "Polygon" and geometry_type(batch) == "MultiPolygon":
            self._promote()
        if not self.rows:
            self.declared = geometry_type(batch)
        header, features = self._render(batch, self.declared)
        self._append(header, features, len(batch))

    def write_rendered(self, features: str, declared: str, rows: int, empty: gpd.GeoDataFrame) -> None:
        """Append ``rows`` features already rendered by :func:`render_geojson` as ``declared``.

        ``empty`` (EPSG:4326, no rows) gives the header if this is the first batch.
        """
        if self.rows and self.declared == "Polygon" and declared == "MultiPolygon":
            self._promote()
        if not self.rows:
            self.declared = declared
        if self.declared == "MultiPolygon" and declared == "Polygon":
            features = "".join(_multi_line(line) for line in features.splitlines(keepends=True))
        header = self.header if self.header is not None else self._render(empty, self.declared)[0]
        self._append(header, features, rows)

    def _append(self, header: str, features: str, rows: int) -> None:
        self.file.write(header if self.header is None else ",\n")
        self.header = header
        self.file.write(features)
        self.rows += rows

    def _promote(self) -> None:
        """Rewrite the features so far as MultiPolygon, line by line (GDAL writes one feature a line)."""
        self.file.close()
        promoted = self.partial.with_name(f".promote{self.partial.name}")
        try:
            with open(self.partial, encoding="utf-8") as old, open(promoted, "w", encoding="utf-8") as new:
                for line in old:
                    new.write(_multi_line(line))
            os.replace(promoted, self.partial)
        finally:
            promoted.unlink(missing_ok=True)
        self.file = open(self.partial, "a", encoding="utf-8")  # noqa: SIM115
        self.declared = "MultiPolygon"

    def close(self, empty: gpd.GeoDataFrame) -> None:
        if self.header is None:
            header, _ = self._render(empty, "Polygon")
            self.file.write(header + "\n")
        self.file.write(_GEOJSON_TAIL[1:])
        self.file.close()

    def abort(self) -> None:
        self.file.close()


def _multi_line(line: str) -> str:
    polygon = '"geometry": { "type": "Polygon", "coordinates": ['
    if polygon not in line:
        return line
    end = line.rstrip("\n")
    comma = "," if end.endswith(",") else ""
    body = end.removesuffix(",").removesuffix(" } }")
    body = body.replace(polygon, '"geometry": { "type": "MultiPolygon", "coordinates": [ [', 1)
    return f"{body} ] }} }}{comma}\n"


def promote_lines(lines: list[str]) -> list[str]:
    """GeoJSON feature lines (as :func:`render_geojson` splits them) with each Polygon made a MultiPolygon."""
    return [_multi_line(line).rstrip("\n") for line in lines]


def feature_lines(pieces: list[tuple[str, str, int]]) -> tuple[list[str], str]:
    """The feature lines of rendered pieces ``(features, declared, rows)``, all of one declared type.

    Lines of Polygon pieces are promoted when another piece is MultiPolygon (a layer has one type).
    """
    declared = "MultiPolygon" if any(kind == "MultiPolygon" and rows for _, kind, rows in pieces) else "Polygon"
    lines: list[str] = []
    for text, kind, rows in pieces:
        if not rows:
            continue
        own = text.split(",\n")
        lines += promote_lines(own) if declared != kind else own
    return lines, declared


class _ParquetStream:
    """GeoParquet, one row group per batch; the ``geo`` metadata is completed at close."""

    def __init__(self, partial: Path) -> None:
        self.partial = partial
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.types: set[str] = set()
        self.bounds: list[np.ndarray] = []

    def write(self, batch: gpd.GeoDataFrame) -> None:
        # No index column: row labels left by filtering mean nothing to a reader.
        table = _geopandas_to_arrow(batch.reset_index(drop=True), index=False)
        geo = json.loads(table.schema.metadata[b"geo"])
        column = geo["columns"][geo["primary_column"]]
        self.types.update(column["geometry_types"])
        if "bbox" in column:
            self.bounds.append(np.asarray(column["bbox"], dtype=np.float64))
        if self.writer is None or self.schema is None:
            self.schema = table.schema
            # ARROW:schema is written at close, with the final ``geo`` in it.
            self.writer = pq.ParquetWriter(self.partial, table.schema, compression="snappy", store_schema=False)
        # Every batch in the first one's types (a column of one batch could otherwise be inferred differently).
        self.writer.write_table(table.cast(self.schema))

    def close(self, empty: gpd.GeoDataFrame) -> None:
        if self.writer is None:
            self.write(empty)
        assert self.writer is not None and self.schema is not None
        geo = json.loads(self.schema.metadata[b"geo"])
        column = geo["columns"][geo["primary_column"]]
        column["geometry_types"] = sorted(self.types)
        column.pop("bbox", None)
        if self.bounds:
            stacked = np.stack(self.bounds)
            column["bbox"] = [*stacked[:, :2].min(axis=0).tolist(), *stacked[:, 2:].max(axis=0).tolist()]
        metadata = dict(self.schema.metadata) | {b"geo": json.dumps(geo).encode()}
        final = self.schema.with_metadata(metadata)
        self.writer.add_key_value_metadata(
            metadata | {b"ARROW:schema": base64.b64encode(final.serialize().to_pybytes())}
        )
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()


class VectorWriter:
    """The two vector outputs of one run, appended batch by batch and completed atomically.

    Use as a context manager: leaving it normally renames both partials to ``vectors`` and
    ``geojson``; leaving it by an exception removes them (a known I/O failure is raised as
    :class:`~geoseg.errors.StageError`). In memory it holds one batch at a time plus, for
    GeoParquet, one bbox per batch.

    Args:
        vectors: final path of the ``.gpkg`` or ``.parquet`` in the mosaic CRS.
        geojson: final path of the EPSG:4326 GeoJSON.
        layer: GeoPackage/GeoJSON layer name.
        empty: the schema (zero rows, with CRS), written if no batch has a row.
        to_wgs84: reprojects a batch for the GeoJSON.
        errors: exception types that mean a failed write rather than a bug.
    """

    def __init__(self, vectors: Path, geojson: Path, *, layer: str, empty: gpd.GeoDataFrame, to_wgs84, errors) -> None:
        self.vectors, self.geojson, self.empty, self.to_wgs84, self.errors = vectors, geojson, empty, to_wgs84, errors
        self.features = 0
        self.layer = layer
        self.main: _GpkgStream | _ParquetStream | None = None
        self.json: _GeoJsonStream | None = None

    def _fail(self, exc: BaseException) -> StageError:
        return StageError(f"{self.vectors.parent}: writing the vector outputs failed: {exc}")

    def __enter__(self) -> VectorWriter:
        try:
            self.vectors.parent.mkdir(parents=True, exist_ok=True)
            for final in (self.vectors, self.geojson):
                remove_partial(partial_name(final))  # left by an earlier crash; GDAL would add to it
            main = partial_name(self.vectors)
            self.main = _ParquetStream(main) if self.vectors.suffix == ".parquet" else _GpkgStream(main, self.layer)
            self.json = _GeoJsonStream(partial_name(self.geojson), self.layer)
        except self.errors as exc:
            self._abort()
            raise self._fail(exc) from exc
        return self

    def write(self, batch: gpd.GeoDataFrame) -> None:
        """Append the finished features of ``batch`` (in the mosaic CRS) to both outputs."""
        if not len(batch):
            return
        assert self.main is not None and self.json is not None, "use VectorWriter as a context manager"
        self.main.write(batch)
        wgs84 = self.to_wgs84(batch)
        if len(wgs84):
            self.json.write(wgs84)
        self.features += len(batch)

    def write_rendered(self, batch: gpd.GeoDataFrame, geojson: str, declared: str, geojson_rows: int) -> None:
        """Append ``batch`` (mosaic CRS) and its GeoJSON features already rendered elsewhere.

        ``geojson`` is :func:`render_geojson`'s second part for ``to_wgs84(batch)``, ``geojson_rows`` long.
        """
        if not len(batch):
            return
        self.write_features(batch)
        self.write_geojson(geojson, declared, geojson_rows)

    def write_features(self, batch: gpd.GeoDataFrame) -> None:
        """Append ``batch`` (mosaic CRS) to the main output only; its GeoJSON goes by :meth:`write_geojson`."""
        assert self.main is not None, "use VectorWriter as a context manager"
        if len(batch):
            self.main.write(batch)
            self.features += len(batch)

    def write_geojson(self, geojson: str, declared: str, rows: int) -> None:
        """Append ``rows`` GeoJSON features rendered elsewhere (:func:`render_geojson`'s second part)."""
        assert self.json is not None, "use VectorWriter as a context manager"
        if rows:
            self.json.write_rendered(geojson, declared, rows, self.to_wgs84(self.empty))

    def __exit__(self, kind, exc, trace) -> None:
        if exc is None:
            try:
                assert self.main is not None and self.json is not None
                self.main.close(self.empty)
                self.json.close(self.to_wgs84(self.empty))
                for final in (self.vectors, self.geojson):
                    os.replace(partial_name(final), final)
                return
            except BaseException as failure:
                exc = failure
                self._abort()
                if isinstance(failure, self.errors):
                    raise self._fail(failure) from failure
                raise
        self._abort()
        if isinstance(exc, self.errors):  # a known failure: one line; anything else is a bug, raised as itself
            raise self._fail(exc) from exc

    def _abort(self) -> None:
        for stream in (self.main, self.json):
            if isinstance(stream, _ParquetStream | _GeoJsonStream):
                # Already failing: a close that fails too must not hide why; the partial goes next.
                with contextlib.suppress(Exception):
                    stream.abort()
        if self.vectors.parent.is_dir():
            for final in (self.vectors, self.geojson):
                remove_partial(partial_name(final))
