"""Rasters (tiles with mirror padding, nodata, alpha, CRS checks) and labels (reprojection, rasterizing)."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from shapely.geometry import box

from geoseg.errors import InputRasterError, InputVectorError
from geoseg.io.labels import IGNORE, load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene, read_tile
from geoseg.tiling import plan_tiles
from tests.factories import ORIGIN, real_raster, tiny_scene


def random_scene(make_geotiff, shape=(3, 150, 130), **kwargs):
    data = np.random.default_rng(0).integers(1, 255, shape, dtype=np.uint8)
    return make_geotiff("scene.tif", data, **kwargs), data


def test_tiles_equal_a_mirror_padded_whole_image(make_geotiff):
    path, data = random_scene(make_geotiff)
    halo, size = 24, 96
    padded = np.pad(data, ((0, 0), (halo, halo + size), (halo, halo + size)), mode="reflect")
    with rasterio.open(path) as src:
        for tile in plan_tiles(150, 130, tile_size=size, halo=halo):
            pixels, valid = read_tile(src, tile, (1, 2, 3))
            expected = padded[:, tile.row : tile.row + size, tile.col : tile.col + size]
            assert pixels.shape == (3, size, size)
            assert (pixels == expected).all()
            assert valid.shape == (tile.height, tile.width) and valid.all()


def test_nodata_pixels_are_invalid(make_geotiff):
    data = np.full((3, 64, 64), 100, np.uint8)
    data[:, :10, :] = 0
    path = make_geotiff("nodata.tif", data, nodata=0)
    with rasterio.open(path) as src:
        _, valid = read_tile(src, plan_tiles(64, 64, tile_size=64, halo=0)[0], (1, 2, 3))
    assert not valid[:10].any() and valid[10:].all()


def test_alpha_band_is_a_mask_not_a_colour(make_geotiff):
    data = np.full((4, 64, 64), 120, np.uint8)
    data[3] = 255
    data[3, :, :20] = 0
    path = make_geotiff(
        "rgba.tif", data, colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    )
    scene = inspect_scene(path)
    assert scene.bands == (1, 2, 3) and scene.alpha == 4
    with pytest.raises(InputRasterError, match="alpha band"):
        inspect_scene(path, bands=[1, 2, 4])
    with rasterio.open(path) as src:
        _, valid = read_tile(src, plan_tiles(64, 64, tile_size=64, halo=0)[0], scene.bands)
    assert not valid[:, :20].any() and valid[:, 20:].all()


def test_raster_without_crs_is_refused_with_the_fix(make_geotiff):
    path, _ = random_scene(make_geotiff, crs=None)
    with pytest.raises(InputRasterError, match="no CRS") as info:
        inspect_scene(path, field="predict.scene")
    assert str(path) in str(info.value) and "predict.scene" in str(info.value) and "gdal_edit" in str(info.value)


def test_missing_and_corrupt_rasters(tmp_path):
    with pytest.raises(InputRasterError, match="file not found"):
        inspect_scene(tmp_path / "missing.tif")
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(InputRasterError, match="not a readable raster"):
        inspect_scene(corrupt)


def test_band_out_of_range(make_geotiff):
    path, _ = random_scene(make_geotiff)
    with pytest.raises(InputRasterError, match=r"\[5\] not in the raster's bands 1..3"):
        inspect_scene(path, bands=[1, 5])


def write_labels(tmp_path, geoms, classes, crs="EPSG:32633"):
    path = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"class": classes}, geometry=geoms, crs=crs).to_file(path, driver="GPKG")
    return path


def test_labels_in_another_crs_are_reprojected_before_rasterizing(make_geotiff, tmp_path):
    path, _ = random_scene(make_geotiff, shape=(3, 100, 100), nodata=0)
    scene = inspect_scene(path)
    square = box(ORIGIN.c + 10, ORIGIN.f - 30, ORIGIN.c + 30, ORIGIN.f - 10)  # pixels 20..60 in x and y
    in_wgs84 = gpd.GeoSeries([square], crs="EPSG:32633").to_crs("EPSG:4326")
    labels = load_labels(
        write_labels(tmp_path, list(in_wgs84), ["water"], crs="EPSG:4326"),
        scene=scene,
        classes=["background", "water"],
        field="class",
    )
    out = rasterize_labels(labels, scene, tmp_path / "labels.tif", block=32)
    with rasterio.open(out) as src:
        raster = src.read(1)
        assert src.crs == scene.crs and src.transform == scene.transform
    inside = raster[22:58, 22:58]
    assert (inside == 1).all() and raster[:18].max() == 0 and raster[62:].max() == 0


def test_rasterized_labels_mark_nodata_as_ignore_and_burn_in_file_order(make_geotiff, tmp_path):
    data = np.full((3, 64, 64), 50, np.uint8)
    data[:, :, :8] = 0
    scene = inspect_scene(make_geotiff("s.tif", data, nodata=0))
    whole = box(ORIGIN.c, ORIGIN.f - 16, ORIGIN.c + 16, ORIGIN.f)  # pixels 0..32 (0.5 m pixels)
    corner = box(ORIGIN.c + 8, ORIGIN.f - 8, ORIGIN.c + 16, ORIGIN.f)  # rows 0..16, cols 16..32
    labels = load_labels(
        write_labels(tmp_path, [whole, corner], ["water", "road"]),
        scene=scene,
        classes=["background", "water", "road"],
        field="class",
    )
    with rasterio.open(rasterize_labels(labels, scene, tmp_path / "l.tif", block=32)) as src:
        raster = src.read(1)
    assert (raster[:, :8] == IGNORE).all()
    assert (raster[:16, 16:32] == 2).all()  # burned after the water, so on top of it
    assert (raster[:32, 8:16] == 1).all() and (raster[16:32, 16:32] == 1).all()
    assert (raster[32:, 8:] == 0).all() and (raster[:, 32:] == 0).all()


def test_label_problems_name_the_file_and_the_fix(make_geotiff, tmp_path):
    path, _ = random_scene(make_geotiff)
    scene = inspect_scene(path)
    far_away = box(0, 0, 10, 10)
    labels = write_labels(tmp_path, [far_away], ["water"])
    with pytest.raises(InputVectorError, match="no label polygon overlaps the scene"):
        load_labels(labels, scene=scene, classes=["background", "water"], field="class")
    near = box(ORIGIN.c, ORIGIN.f - 5, ORIGIN.c + 5, ORIGIN.f)
    labels = write_labels(tmp_path, [near], ["lava"])
    with pytest.raises(InputVectorError, match=r"\['lava'\] are not in the job's classes"):
        load_labels(labels, scene=scene, classes=["background", "water"], field="class")
    with pytest.raises(InputVectorError, match="no attribute 'kind'"):
        load_labels(labels, scene=scene, classes=["background", "lava"], field="kind")


def test_instance_raster_gives_each_polygon_its_own_id(tmp_path):
    scene, gpkg = tiny_scene(tmp_path)
    info = inspect_scene(scene)
    frame = load_labels(gpkg, scene=info, classes=["background", "water", "vegetation"], field="class")
    path = rasterize_labels(frame, info, tmp_path / "ids.tif", instances=True)
    with rasterio.open(path) as src:
        ids = src.read(1)
    assert src.dtypes[0] == "uint32"
    assert set(np.unique(ids)) - {0} <= set(range(1, len(frame) + 1))
    assert len(np.unique(ids)) > len(frame) // 2  # most polygons visible (later ones burn over earlier)


@pytest.mark.parametrize(
    "name,bands,alpha",
    [
        ("cogeo.tif", (1, 2, 3), None),
        ("RGB.byte.tif", (1, 2, 3), None),
        ("RGBA.uint16.tif", (1, 2, 3), 4),
        ("alpha.tif", (1, 2, 3), 4),
    ],
)
def test_real_geotiffs_are_inspected_with_their_georeferencing(name, bands, alpha):
    path = real_raster(name)
    scene = inspect_scene(path)
    with rasterio.open(path) as src:
        assert scene.crs == src.crs and scene.transform == src.transform
    assert scene.bands == bands and scene.alpha == alpha
