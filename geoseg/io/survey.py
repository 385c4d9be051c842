"""Many files, one survey: a list, a glob or a STAC item mapped as one raster on one grid.

An orthophoto is often delivered as hundreds of GeoTIFF tiles, some in another
CRS, with gaps between them. geoseg maps them as one survey through GDAL's
Raster Tile Index driver (GTI, GDAL >= 3.9, https://gdal.org/drivers/raster/gti.html):
a GeoPackage lists every file's footprint and location, its layer metadata
fixes the survey grid (CRS, pixel size, extent), and GDAL composites the files
window by window, warping on the fly those in another CRS or at another pixel
size and honouring each file's nodata and alpha. Its mask band is 0 where no
file has data, so gaps stay invalid. Every stage then reads the ``.gti.gpkg``
as it reads a GeoTIFF (rasterio windows), and QGIS opens it too.

The grid: the CRS is ``predict.crs`` or the first file's; the pixel size is
``predict.resolution`` (or the model's, for ``resample: model``) or the first
file's; the extent covers every file and is snapped to the first file's pixel
lattice, so files on that lattice are read pixel for pixel, unresampled.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import calculate_default_transform, transform_bounds

from geoseg.config.locations import RemotePath, as_location, is_uri
from geoseg.errors import InputRasterError
from geoseg.io.raster import SceneInfo

__all__ = ["SurveyGrid", "expand_sources", "gdal_location", "plan_survey", "write_survey_index"]

_GLOB_CHARS = "*?["
# GDAL's data type names for the numpy dtypes rasterio reports.
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class SurveyGrid:
    """The one grid a survey's files are mapped on."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    resampling: str  # GDAL's name: nearest at the files' own pixel size, bilinear at one the job chose

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return left, top + self.transform.e * self.height, left + self.transform.a * self.width, top


def expand_sources(
    scene: Path | RemotePath | Sequence[Path | RemotePath], *, field: str, stac_asset: str | None = None
) -> list[Path | RemotePath]:
    """The files a ``predict.scene`` names: itself, each of a list, a glob's matches (sorted), a STAC item's asset.

    InputRasterError lists every entry that names no file.
    """
    items = list(scene) if isinstance(scene, (list, tuple)) else [scene]
    files: list[Path | RemotePath] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]" if isinstance(scene, (list, tuple)) else field
        try:
            files.extend(_expand(str(item), where, stac_asset))
        except InputRasterError as exc:
            problems.extend(exc.problems)
    if problems:
        raise InputRasterError(problems)
    return files


def _expand(text: str, where: str, stac_asset: str | None) -> list[Path | RemotePath]:
    if any(ch in text for ch in _GLOB_CHARS):
        if is_uri(text):
            raise InputRasterError(f"{text}: {where}: globs are not expanded in object storage; list the files instead")
        matches = sorted(glob.glob(text))
        if not matches:
            raise InputRasterError(f"{text}: {where}: no file matches this pattern; check the folder and pattern")
        return [Path(m) for m in matches]
    if as_location(text).suffix.lower() == ".json":
        return _stac_assets(as_location(text), where, stac_asset)
    return [as_location(text)]


def _stac_assets(path: Path | RemotePath, field: str, asset_key: str | None) -> list[Path | RemotePath]:
    """The GeoTIFF asset of every item of a STAC item, collection or catalog (read with pystac)."""
    import pystac  # only where a job names STAC

    if not path.exists():
        raise InputRasterError(f"{path}: {field}: file not found; check the path in the job file")
    try:
        stac = pystac.read_file(str(path))
    except (pystac.STACError, ValueError, KeyError, OSError) as exc:
        raise InputRasterError(f"{path}: {field}: not a readable STAC item or collection ({exc})") from None
    if isinstance(stac, pystac.Item):
        items = [stac]
    elif isinstance(stac, pystac.Catalog):  # a Collection is a Catalog
        items = list(stac.get_items(recursive=True))
    else:
        raise InputRasterError(f"{path}: {field}: a STAC {type(stac).__name__}; give an item, collection or catalog")
    if not items:
        raise InputRasterError(f"{path}: {field}: this STAC {type(stac).__name__.lower()} holds no items")
    files: list[Path | RemotePath] = []
    for item in items:
        asset = _pick_asset(item, asset_key)
        if asset is None:
            keys = ", ".join(item.assets) or "none"
            wanted = f"no asset {asset_key!r}" if asset_key else "no GeoTIFF asset with the `data` role"
            raise InputRasterError(
                f"{path}: {field}: item {item.id!r} has {wanted} (assets: {keys}); "
                "set predict.stac_asset to one of them"
            )
        files.append(as_location(asset.get_absolute_href() or asset.href))
    return files


def _pick_asset(item, key: str | None):
    if key is not None:
        return item.assets.get(key)
    tiffs = [
        a for a in item.assets.values() if "tiff" in (a.media_type or "") or a.href.lower().endswith((".tif", ".tiff"))
    ]
    data = [a for a in tiffs if "data" in (a.roles or [])]
    return (data or tiffs or [None])[0]


def gdal_location(path: Path | RemotePath) -> str:
    """The name GDAL opens a file by: an absolute path, or ``/vsis3/bucket/key`` for an s3:// URI."""
    if is_uri(path):
        return "/vsis3/" + str(path).split("://", 1)[1]
    return str(Path(path).resolve())


def plan_survey(
    files: Sequence[SceneInfo],
    *,
    field: str,
    crs: str | None = None,
    resolution: float | tuple[float, float] | None = None,
) -> SurveyGrid:
    """The grid that covers every file; InputRasterError listing every file that cannot join the survey."""
    first = files[0]
    problems = [
        f"{info.path}: {field}: {len(info.bands)} band(s) of {info.dtype}, but {first.path.name} (the first file) "
        f"has {len(first.bands)} of {first.dtype}; a survey's files must share bands and data type: "
        "convert this file (gdal_translate -b / -ot) or leave it out"
        for info in files[1:]
        if (info.count, info.dtype) != (first.count, first.dtype)
    ]
    try:
        target = CRS.from_user_input(crs) if crs else first.crs
    except CRSError as exc:
        raise InputRasterError(f"predict.crs: not a CRS GDAL knows ({exc}); use e.g. EPSG:32633") from None
    if problems:
        raise InputRasterError(problems)
    edges = [transform_bounds(info.crs, target, *info.bounds, densify_pts=21) for info in files]
    res_x, res_y = _pixel_size(first, target, resolution)
    if first.crs == target:
        origin_x, origin_y = first.transform.c, first.transform.f  # snap to the first file's lattice
    else:
        origin_x, origin_y = min(e[0] for e in edges), max(e[3] for e in edges)
    left = origin_x + math.floor((min(e[0] for e in edges) - origin_x) / res_x + 1e-6) * res_x
    top = origin_y - math.floor((origin_y - max(e[3] for e in edges)) / res_y + 1e-6) * res_y
    width = math.ceil((max(e[2] for e in edges) - left) / res_x - 1e-6)
    height = math.ceil((top - min(e[1] for e in edges)) / res_y - 1e-6)
    # Nearest keeps every pixel a value some file holds (exact where the lattices agree); a pixel size
    # the job chooses averages with bilinear, as nearest would alias when shrinking.
    resampling = "nearest" if resolution is None else "bilinear"
    return SurveyGrid(target, Affine(res_x, 0.0, left, 0.0, -res_y, top), width, height, resampling)


def _res(info: SceneInfo) -> tuple[float, float]:
    return abs(info.transform.a), abs(info.transform.e)


def _pixel_size(first: SceneInfo, target: CRS, resolution: float | tuple[float, float] | None) -> tuple[float, float]:
    if isinstance(resolution, tuple):
        return resolution
    if resolution is not None:
        return resolution, resolution
    if first.crs == target:
        return _res(first)
    transform, _, _ = calculate_default_transform(first.crs, target, first.width, first.height, *first.bounds)
    return abs(transform.a), abs(transform.e)


def write_survey_index(grid: SurveyGrid, files: Sequence[SceneInfo], path: Path) -> Path:
    """Write the survey as a GDAL VRT mosaic at ``path``, with a warped VRT beside it for each file off the grid.

    Files on the grid's lattice are placed pixel for pixel (a ComplexSource per file); the others are
    warped onto it window by window by a warped VRT (``rasterio.vrt.WarpedVRT``, saved by GDAL's VRT
    driver). Every source composites through its own mask (``UseMaskBand``: nodata, alpha, or the
    warped edge), later files over earlier ones; the mosaic's mask band is the union of the files'
    masks, so gaps stay invalid. Written under a temporary name, then renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    placed = []
    for i, info in enumerate(files):
        source, window = _on_lattice(grid, info)
        if window is None:
            source, window = _warped_source(grid, info, path.with_name(f"{path.stem}_{i}.vrt"))
        placed.append((source, window))
    first = files[0]
    bands = "".join(_band_xml(grid, first, b, placed) for b in range(1, first.count + 1))
    mask = _band_xml(grid, first, None, placed)
    left, top = grid.transform.c, grid.transform.f
    geo = f"{left!r}, {grid.transform.a!r}, 0.0, {top!r}, 0.0, {grid.transform.e!r}"
    xml = (
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">\n'
        f"  <SRS>{escape(grid.crs.to_wkt())}</SRS>\n  <GeoTransform>{geo}</GeoTransform>\n"
        f"{bands}  <MaskBand>\n{mask}  </MaskBand>\n</VRTDataset>\n"
    )
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(xml)
    os.replace(partial, path)
    return path


def _on_lattice(grid: SurveyGrid, info: SceneInfo) -> tuple[str, tuple[int, int, int, int] | None]:
    """The file's GDAL name and its (col, row, width, height) on the grid; None where it must be warped."""
    if info.crs != grid.crs or _res(info) != (grid.transform.a, -grid.transform.e) or grid.resampling != "nearest":
        return gdal_location(info.path), None
    col, row = ~grid.transform @ (info.transform.c, info.transform.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return gdal_location(info.path), None
    return gdal_location(info.path), (round(col), round(row), info.width, info.height)


def _warped_source(grid: SurveyGrid, info: SceneInfo, vrt: Path) -> tuple[str, tuple[int, int, int, int]]:
    """A warped VRT of the file on the grid's lattice, over the grid pixels its footprint touches."""
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    west, south, east, north = transform_bounds(info.crs, grid.crs, *info.bounds, densify_pts=21)
    inverse = ~grid.transform
    c0, r0 = (math.floor(v) for v in inverse @ (west, north))
    c1, r1 = (math.ceil(v) for v in inverse @ (east, south))
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, grid.width), min(r1, grid.height)
    transform = grid.transform @ Affine.translation(c0, r0)
    with rasterio.open(gdal_location(info.path)) as src:
        # A file without nodata or alpha gets an alpha band, so the area the warp does not reach is masked.
        alpha = src.nodata is None and info.alpha is None
        with WarpedVRT(
            src,
            crs=grid.crs,
            transform=transform,
            width=c1 - c0,
            height=r1 - r0,
            resampling=Resampling[grid.resampling],
            add_alpha=alpha,
        ) as warped:
            rasterio.shutil.copy(warped, str(vrt), driver="VRT")
    return str(vrt), (c0, r0, c1 - c0, r1 - r0)


def _band_xml(
    grid: SurveyGrid, first: SceneInfo, band: int | None, placed: list[tuple[str, tuple[int, int, int, int]]]
) -> str:
    """One VRT band (``band`` None: the mask band) composited from every placed source."""
    sources = []
    for name, (col, row, width, height) in placed:
        rects = (
            f'<SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'<DstRect xOff="{col}" yOff="{row}" xSize="{width}" ySize="{height}"/>'
        )
        if band is None:  # a file's mask: 0 is transparent, so it never hides an earlier file's data
            body = f"<SourceBand>mask,1</SourceBand>{rects}<NODATA>0</NODATA>"
        else:
            body = f"<SourceBand>{band}</SourceBand>{rects}<UseMaskBand>true</UseMaskBand>"
        sources.append(
            f'      <ComplexSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>{body}'
            "</ComplexSource>\n"
        )
    kind = "Byte" if band is None else _GDAL_TYPES[first.dtype]
    number = "" if band is None else f' band="{band}"'
    interp = "<ColorInterp>Alpha</ColorInterp>" if band is not None and band == first.alpha else ""
    return f'    <VRTRasterBand dataType="{kind}"{number}>{interp}\n{"".join(sources)}    </VRTRasterBand>\n'
