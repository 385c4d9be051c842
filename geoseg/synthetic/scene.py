"""Writing a synthetic scene: an RGB GeoTIFF with its labels as polygons and raster.

The label raster is burned from exactly the polygons written to the GeoPackage,
in file order, and the RGB is rendered from that same raster, so image, vector
labels and raster labels agree pixel for pixel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.transform import from_origin

from geoseg.synthetic.flood import (
    FloodDemoFiles,
    add_flood,
    flood_demo_files,
    flood_truth,
    flooded_buildings_frame,
    roads_frame,
    zones_frame,
)
from geoseg.synthetic.layout import DEMO_CLASSES, SceneObject, make_layout
from geoseg.synthetic.render import render_rgb

__all__ = ["SceneFiles", "generate_demo", "make_scene"]

LABEL_NODATA = 255
# GeoPackages record a "last change" timestamp; pinning it keeps files byte-identical.
_GPKG_DATE = "2000-01-01T00:00:00.000Z"
_TIFF_PROFILE = {"driver": "GTiff", "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}


@dataclass(frozen=True)
class SceneFiles:
    """Paths of one synthetic scene's files."""

    scene: Path
    labels_gpkg: Path
    labels_tif: Path


def _collar(size: int, rng: np.random.Generator) -> np.ndarray:
    """No-data collar of an orthomosaic: a slanted, ragged band on one or two edges.

    Returns a boolean mask, True where there is no image (about 5 % of pixels).
    """

    def edge(mean_frac: float) -> np.ndarray:
        # Width of the band along one edge: a straight slant made of a few
        # segments (one per flight line), plus a 1–2 px ragged seam.
        knots = np.linspace(0, size, 6)
        slope = rng.uniform(0.4, 1.6, 2)
        widths = mean_frac * size * np.interp(knots, [0, size], slope) * rng.uniform(0.8, 1.2, 6)
        width = np.interp(np.arange(size), knots, widths)
        return width + rng.normal(0, 1.0, size).cumsum().clip(-3, 3)

    mask = np.arange(size)[None, :] < edge(rng.uniform(0.04, 0.055))[:, None]
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.7:
        band = np.arange(size)[:, None] < edge(rng.uniform(0.012, 0.022))[None, :]
        mask |= band if rng.random() < 0.5 else band[::-1, :]
    return np.ascontiguousarray(mask)


def _write_tif(path: Path, array: np.ndarray, crs: str, transform, nodata: int, **extra) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    count = array.shape[0]
    with rasterio.open(
        tmp,
        "w",
        width=array.shape[2],
        height=array.shape[1],
        count=count,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=nodata,
        **_TIFF_PROFILE,
        **extra,
    ) as dst:
        dst.write(array)
    os.replace(tmp, path)


def _write_gpkg(path: Path, classes: list[str], geoms: np.ndarray, crs: str) -> None:
    _write_frame(path, gpd.GeoDataFrame({"class": classes}, geometry=list(geoms), crs=crs), "labels", "Polygon")


def _write_frame(path: Path, frame: gpd.GeoDataFrame, layer: str, geometry_type: str) -> None:
    """Write ``frame`` as the one layer of a GeoPackage, with the pinned date (so byte-identical each time)."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    old = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": _GPKG_DATE})
    try:
        pyogrio.write_dataframe(frame, tmp, layer=layer, driver="GPKG", geometry_type=geometry_type)
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": old})
    os.replace(tmp, path)


class _Scene(NamedTuple):
    """What :func:`_make` wrote, and what the flood files are built from."""

    files: SceneFiles
    objects: list[SceneObject]
    geoms: np.ndarray  # the objects' polygons in map coordinates
    labels: np.ndarray


def make_scene(
    out_dir: Path,
    *,
    size: int,
    seed: int,
    nodata_collar: bool = False,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    origin: tuple[float, float] = (500000.0, 5_000_000.0),
    flood: bool = False,
    flight: int = 0,
) -> SceneFiles:
    """Generate one synthetic aerial scene and its labels.

    Writes ``scene.tif`` (3-band uint8 RGB, nodata 0), ``labels.gpkg`` (layer
    ``labels``, one polygon per object, string column ``class``, in burn order)
    and ``labels.tif`` (uint8 class indices of :data:`DEMO_CLASSES`, 255 where
    the scene has no data) into ``out_dir``. The same arguments always give
    byte-identical files.

    Args:
        out_dir: folder for the three files (created if missing).
        size: width and height in pixels.
        seed: seed of the scene's layout, colours and noise.
        nodata_collar: blank a ragged band along one or two edges, as in the
            collar of an orthomosaic.
        crs: the scene's (projected) CRS.
        pixel_size: ground size of a pixel in CRS units.
        origin: map coordinates of the top-left corner.
        flood: add flood water (:func:`~geoseg.synthetic.flood.add_flood`) to
            the layout; everything else in the layout stays as without it.
        flight: 0 renders with the seed's own colours and noise; another
            number renders the same layout as another flight over it would.

    Returns:
        The paths of the three files.
    """
    return _make(out_dir, size, seed, nodata_collar, crs, pixel_size, origin, flood=flood, flight=flight).files


def _make(
    out_dir: Path,
    size: int,
    seed: int,
    nodata_collar: bool,
    crs: str,
    pixel_size: float,
    origin: tuple[float, float],
    *,
    flood: bool,
    flight: int,
) -> _Scene:
    """:func:`make_scene`, also returning the layout and labels the flood files are built from."""
    size = _checked_size(size, pixel_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Spawned in this order (layout, render, collar, flood) so a seed always gives the same scene; the streams
    # are independent, so the collar's and the flood's draws leave the rest of the layout and colours alone.
    layout_rng, render_rng, collar_rng, flood_rng = np.random.default_rng(seed).spawn(4)
    if flight:
        # Another flight: a stream of its own, apart from the four above (their spawn keys are (0,) to (3,)).
        render_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4, int(flight))))

    objects = make_layout(size, layout_rng)
    if flood:
        objects = add_flood(objects, size, flood_rng)
    transform = from_origin(origin[0], origin[1], pixel_size, pixel_size)
    geoms = _map_geometries(objects, origin, pixel_size)
    class_index = np.array([DEMO_CLASSES.index(o.cls) for o in objects], np.uint8)
    labels, ids = _burn(geoms, class_index, size, transform)
    rgb = render_rgb(objects, labels, ids, render_rng)
    del ids  # freed before the float RGB is rounded, which takes a few copies of it
    rgb = _rgb_bands(rgb)
    if nodata_collar:
        collar = _collar(size, collar_rng)
        rgb[:, collar] = 0
        labels[collar] = LABEL_NODATA

    files = SceneFiles(out_dir / "scene.tif", out_dir / "labels.gpkg", out_dir / "labels.tif")
    _write_tif(
        files.scene, np.ascontiguousarray(rgb), crs, transform, 0, predictor=2, photometric="RGB", interleave="pixel"
    )
    _write_tif(files.labels_tif, labels[None], crs, transform, LABEL_NODATA)
    _write_gpkg(files.labels_gpkg, [o.cls for o in objects], geoms, crs)
    return _Scene(files, objects, geoms, labels)


def _checked_size(size: int, pixel_size: float) -> int:
    """``size`` as an int, after refusing a scene under 64 pixels or a pixel size that is not positive.

    Raises:
        ValueError: either is out of range.
    """
    if int(size) != size or size < 64:
        raise ValueError(f"size must be an integer of at least 64 pixels (got {size!r})")
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be positive (got {pixel_size!r})")
    return int(size)


def _map_geometries(objects: list[SceneObject], origin: tuple[float, float], pixel_size: float) -> np.ndarray:
    """The objects' pixel-space polygons in map coordinates, each made valid (an object array, burn order)."""
    ox, oy = origin
    scale = np.array([pixel_size, -pixel_size])
    geoms = shapely.transform(np.array([o.geom for o in objects], dtype=object), lambda xy: xy * scale + (ox, oy))
    return np.array([g if g.is_valid else shapely.make_valid(g) for g in geoms], dtype=object)


def _burn(geoms: np.ndarray, class_index: np.ndarray, size: int, transform: Affine) -> tuple[np.ndarray, np.ndarray]:
    """Burn the polygons in file order: the class raster (uint8) and the object-id raster (int32, 1-based).

    Both come from the same polygons by the same rule, so they must agree
    pixel for pixel; the renderer relies on it to colour each object.
    """
    shape = (size, size)
    labels = rasterize(
        list(zip(geoms, class_index.tolist(), strict=True)),
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=False,
        dtype="uint8",
    )
    ids = rasterize(
        list(zip(geoms, range(1, len(geoms) + 1), strict=True)),
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=False,
        dtype="int32",
    )
    if not np.array_equal(np.concatenate([[0], class_index])[ids], labels):  # pragma: no cover - GDAL guard
        raise RuntimeError("object-id and class rasterizations disagree; the RGB would not match the labels")
    return labels, ids


def _rgb_bands(rgb: np.ndarray) -> np.ndarray:
    """Rendered float RGB ``(size, size, 3)`` as band-first uint8 in 1–255: 0 stays free to mark no data."""
    return np.clip(np.rint(rgb), 1, 255).astype(np.uint8).transpose(2, 0, 1)


def generate_demo(
    out: Path, *, train_size: int = 3072, survey_size: int = 4096, seed: int = 7
) -> dict[str, SceneFiles]:
    """Write the demo: a training scene, and the before and after of a flood survey, under ``out``.

    ``out/train`` has no collar, and a flood of its own. ``out/survey`` uses another seed
    (so another layout), lies east of the training scene, has a no-data collar
    and is the ground after a flood; ``out/pre_event`` is the same ground
    before it, on the same grid, from another flight (other colours and noise,
    no collar). The flood files (:func:`~geoseg.synthetic.flood.flood_demo_files`)
    are written too: the survey's road centre lines, its districts, the flood
    truth and the flooded buildings.

    Returns:
        ``{"train": SceneFiles, "survey": SceneFiles, "pre_event": SceneFiles}``.
    """
    out = Path(out)
    pixel_size, crs = 0.5, "EPSG:32633"
    # The model of a flood survey is trained on flood imagery: the training scene is flooded too.
    train = make_scene(out / "train", size=train_size, seed=seed, pixel_size=pixel_size, flood=True)
    origin = (500000.0 + train_size * pixel_size + 1000.0, 5_000_000.0)
    post = _make(out / "survey", survey_size, seed + 1, True, crs, pixel_size, origin, flood=True, flight=0)
    pre = _make(out / "pre_event", survey_size, seed + 1, False, crs, pixel_size, origin, flood=False, flight=1)
    _write_flood_files(flood_demo_files(out), pre, post, crs, pixel_size, origin)
    return {"train": train, "survey": post.files, "pre_event": pre.files}


def _write_flood_files(
    files: FloodDemoFiles, pre: _Scene, post: _Scene, crs: str, pixel_size: float, origin: tuple[float, float]
) -> None:
    """The survey's roads, districts, flood truth and flooded buildings, from the two scenes of one layout."""
    size = post.labels.shape[0]
    transform = from_origin(origin[0], origin[1], pixel_size, pixel_size)
    _write_tif(files.flood_truth, flood_truth(pre.labels, post.labels)[None], crs, transform, LABEL_NODATA)
    _write_frame(files.roads, roads_frame(post.objects, size, origin, pixel_size, crs), "roads", "LineString")
    bounds = (origin[0], origin[1] - size * pixel_size, origin[0] + size * pixel_size, origin[1])
    _write_frame(files.zones, zones_frame(bounds, crs), "zones", "Polygon")
    kinds = np.array([o.kind for o in post.objects])
    pre_water = pre.geoms[np.array([o.cls == "water" for o in pre.objects], bool)]
    buildings = post.geoms[np.array([o.cls == "building" for o in post.objects], bool)]
    frame = flooded_buildings_frame(buildings, post.geoms[kinds == "flood"], pre_water, crs)
    _write_frame(files.flooded_buildings, frame, "buildings", "Polygon")
