"""Turn merged regions into georeferenced, valid features and write them.

Regions arrive as polygons in global pixel coordinates (see ``polygonize``).
Here they are filtered by area, optionally simplified, moved into the mosaic
CRS with its affine transform, repaired, measured and written twice: a
GeoPackage or GeoParquet in the mosaic CRS for analysts and a GeoJSON in
EPSG:4326 (RFC 7946).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.vectorize.metres import areas_m2, metres_per_unit, simplify_tolerance
from geoseg.vectorize.pixelgeom import node_polygons
from geoseg.vectorize.stream import VectorWriter

__all__ = [
    "FORMATS",
    "LAYER",
    "areas_m2",
    "empty_frame",
    "features_frame",
    "finish_vectors",
    "metres_per_unit",
    "open_vectors",
    "regions_to_frame",
    "to_wgs84",
    "write_vectors",
]

LAYER = "polygons"
# Vector formats in the mosaic CRS (``vectorize.format``) and their file suffixes.
FORMATS = {"gpkg": ".gpkg", "parquet": ".parquet"}
# How a write fails without geoseg being wrong: a disk that fills up, a folder that cannot be made,
# storage that goes away. GDAL reports its own I/O errors through pyogrio's data source and layer
# errors; pyarrow (GeoParquet) and Python raise OSError.
_WRITE_ERRORS = (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError)


def pixel_to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Apply the mosaic's affine transform to geometries in pixel coordinates."""
    a, b, c, d, e, f = tuple(transform)[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, apply)


def _polygon_parts(geom) -> list:
    if geom is None or geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    if geom.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [part for sub in geom.geoms for part in _polygon_parts(sub)]
    return []  # points and lines left over by make_valid carry no area


def make_polygonal(geoms: np.ndarray) -> np.ndarray:
    """Repair invalid geometries and keep only their polygonal parts.

    Valid polygons pass untouched. A result with no area becomes None; several
    parts are unioned, so a MultiPolygon appears only if the parts really are
    disjoint.
    """
    out = np.array(geoms, dtype=object)
    bad = ~shapely.is_valid(out) | ~np.isin(shapely.get_type_id(out), (3, 6))
    for i in np.flatnonzero(bad):
        geom = out[i]
        if geom is not None and not geom.is_valid:
            # "structure" rebuilds rings as areas (a bow-tie becomes two
            # triangles) instead of keeping collapsed lines as "linework" does.
            geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
        parts = _polygon_parts(geom)
        if not parts:
            out[i] = None
        elif len(parts) == 1:
            out[i] = parts[0]
        else:
            merged = shapely.union_all(parts)
            out[i] = merged if merged.is_valid else shapely.make_valid(merged, method="structure")
    return out


def simplify_regions(pixel_geoms: np.ndarray, transform: Affine, crs: CRS, simplify_m: float) -> np.ndarray:
    """Simplify in the mosaic CRS by ``simplify_m`` metres on the ground; returns map geometries.

    All vectorized classes are simplified together as one coverage, so a border
    shared by two touching classes moves once, for both, and no gap or overlap
    opens between them. GEOS needs a shared border to carry the same vertices on
    both sides, but GDAL's polygonizer puts vertices only where its own outline
    turns, so the polygons are noded first, exactly, in pixel coordinates
    (``shapely.segmentize`` is no substitute: its float steps land beside the
    integer corners).

    A coverage takes one tolerance: the smallest, in map units, that any region
    needs for ``simplify_m`` on the ground (:func:`~geoseg.vectorize.metres.simplify_tolerance`),
    so no region moves more; in a CRS whose scale is true it is ``simplify_m / unit``.
    """
    tolerance = float(simplify_tolerance(pixel_to_map(pixel_geoms, transform), crs, simplify_m).min())
    noded = pixel_to_map(node_polygons(pixel_geoms), transform)
    try:
        return shapely.coverage_simplify(noded, tolerance)
    except shapely.errors.GEOSException:
        # Not expected for pixel coverages, but a failed coverage pass must not
        # fail the stage: fall back to per-polygon, topology-preserving simplify.
        return shapely.simplify(pixel_to_map(pixel_geoms, transform), tolerance, preserve_topology=True)


def empty_frame(crs: CRS) -> gpd.GeoDataFrame:
    """The output schema with no rows."""
    return gpd.GeoDataFrame(
        {
            "class": pd.Series([], dtype=object),
            "class_id": pd.Series([], dtype=np.int32),
            "area_m2": pd.Series([], dtype=np.float64),
        },
        geometry=gpd.GeoSeries([], crs=_pyproj_crs(crs)),
    )


def features_frame(columns: dict, geoms, crs: CRS) -> gpd.GeoDataFrame:
    """A GeoDataFrame of ``columns`` (name -> values, in order) and map geometries in ``crs``.

    The CRS is the mosaic's own WKT (see :func:`_pyproj_crs`), as for every output.
    """
    return gpd.GeoDataFrame(dict(columns), geometry=gpd.GeoSeries(geoms, crs=_pyproj_crs(crs)))


def _pyproj_crs(crs: CRS) -> pyproj.CRS:
    # The mosaic's own WKT, not a looked-up EPSG code: a near-match (another
    # datum shift, say) must not be swapped in. Its AUTHORITY, if any, is kept.
    return pyproj.CRS.from_wkt(crs.to_wkt())


def regions_to_frame(
    regions: list[tuple[int, object]],
    *,
    transform: Affine,
    crs: CRS,
    class_names: tuple[str, ...] | list[str],
    simplify_m: float = 0.0,
    min_area_m2: float = 0.0,
    geoms: np.ndarray | None = None,
) -> gpd.GeoDataFrame:
    """Build the output table from ``(class_id, pixel-space polygon)`` regions.

    ``min_area_m2`` is compared with each region's exact (unsimplified) area;
    ``area_m2`` is the area of the geometry as written. Both are ground areas
    (:func:`~geoseg.vectorize.metres.areas_m2`), in any CRS. ``geoms``: the map
    geometries to write, one per region, already simplified (by bands:
    :mod:`geoseg.vectorize.band_simplify`); then ``simplify_m`` is not used.
    """
    if not regions:
        return empty_frame(crs)
    class_ids = np.array([c for c, _ in regions], dtype=np.int32)
    pixel_geoms = np.empty(len(regions), dtype=object)
    pixel_geoms[:] = [g for _, g in regions]
    if min_area_m2 > 0:
        keep = areas_m2(pixel_to_map(pixel_geoms, transform), crs) >= min_area_m2
        class_ids, pixel_geoms = class_ids[keep], pixel_geoms[keep]
        geoms = None if geoms is None else np.asarray(geoms, dtype=object)[keep]
    if geoms is not None:
        geoms = np.asarray(geoms, dtype=object)
    elif simplify_m > 0 and len(pixel_geoms):
        geoms = simplify_regions(pixel_geoms, transform, crs, simplify_m)
    else:
        geoms = pixel_to_map(pixel_geoms, transform)
    geoms = make_polygonal(geoms)
    kept = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    class_ids, geoms = class_ids[kept], shapely.orient_polygons(geoms[kept])
    if not len(geoms):
        return empty_frame(crs)
    return gpd.GeoDataFrame(
        {
            "class": pd.Series([str(class_names[c]) for c in class_ids], dtype=object),
            "class_id": class_ids,
            "area_m2": areas_m2(geoms, crs),
        },
        geometry=gpd.GeoSeries(geoms, crs=_pyproj_crs(crs)),
    )


def to_wgs84(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    # geopandas reprojects in longitude/latitude order (always_xy), as RFC 7946
    # wants; a reprojected edge can in rare cases touch another, so re-check.
    wgs84 = frame.to_crs("EPSG:4326")
    if len(wgs84):
        wgs84 = wgs84.set_geometry(make_polygonal(np.asarray(wgs84.geometry.values)), crs="EPSG:4326")
        wgs84 = wgs84[~wgs84.geometry.isna()]
    return wgs84


def open_vectors(out_dir: Path, empty: gpd.GeoDataFrame, *, fmt: str = "gpkg", name: str = LAYER) -> VectorWriter:
    """A :class:`~geoseg.vectorize.stream.VectorWriter` for ``<name>.gpkg|.parquet`` and ``<name>.geojson``.

    Use it as a context manager and hand it each batch of finished features; ``empty`` (zero rows,
    the output columns and CRS) is what is written when no batch has a row.

    Raises:
        ValueError: an unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"vector format must be one of {sorted(FORMATS)!r} (got {fmt!r})")
    out_dir = Path(out_dir)
    return VectorWriter(
        out_dir / f"{name}{FORMATS[fmt]}",
        out_dir / f"{name}.geojson",
        layer=name,
        empty=empty,
        to_wgs84=to_wgs84,
        errors=_WRITE_ERRORS,
    )


def finish_vectors(writer: VectorWriter, fmt: str, name: str = LAYER) -> tuple[Path, Path]:
    """After a completed ``writer``: remove a ``<name>`` file in the *other* format left by an earlier run."""
    for other, suffix in FORMATS.items():
        if other != fmt:
            (writer.vectors.parent / f"{name}{suffix}").unlink(missing_ok=True)
    return writer.vectors, writer.geojson


def write_vectors(frame: gpd.GeoDataFrame, out_dir: Path, *, fmt: str = "gpkg", name: str = LAYER) -> tuple[Path, Path]:
    """Write the features in the mosaic CRS and in EPSG:4326, in one batch (see :func:`open_vectors`).

    ``<name>.gpkg`` (GeoPackage 1.2, layer ``name``) or ``<name>.parquet``
    (GeoParquet, CRS kept as PROJJSON) in the frame's CRS, and always
    ``<name>.geojson`` in EPSG:4326 (RFC 7946). Every attribute column is kept.

    Both files are written under hidden partial names and renamed only once both
    are complete, so a crash leaves neither a truncated file nor one new file next
    to one from an earlier run. For the same reason a ``<name>`` file in the
    *other* format, left by an earlier run, is removed once the new one is in place.

    Args:
        frame: the features, with a CRS.
        out_dir: created if missing.
        fmt: ``"gpkg"`` or ``"parquet"``.
        name: file stem (and GeoPackage/GeoJSON layer name).

    Returns:
        ``(vectors, geojson)``: the GeoPackage or GeoParquet path, then the GeoJSON path.

    Raises:
        ValueError: an unknown ``fmt``.
        StageError: a file could not be written (an ``OSError`` or GDAL's I/O error, as its cause).
    """
    with open_vectors(out_dir, frame.iloc[:0], fmt=fmt, name=name) as writer:
        writer.write(frame)
    return finish_vectors(writer, fmt, name)
