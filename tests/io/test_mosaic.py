import json
import shutil
import subprocess

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from geoseg.io.mosaic import create_mosaic, open_mosaic, write_block

TRANSFORM = Affine(0.5, 0, 500000.0, 0, -0.5, 5000000.0)


@pytest.fixture
def mosaic(tmp_path):
    info = create_mosaic(
        tmp_path / "m.zarr",
        height=300,
        width=260,
        chunk=128,
        crs=CRS.from_epsg(32633),
        transform=TRANSFORM,
        class_names=["background", "water"],
    )
    for row, col, h, w in info.chunk_windows():
        write_block(info, row, col, np.full((h, w), (row // 128 + col // 128) % 2, np.uint8), np.ones((h, w), np.uint8))
    return info


def test_mosaic_round_trips_its_georeferencing(mosaic):
    again = open_mosaic(mosaic.path)
    assert again.crs == CRS.from_epsg(32633) and again.transform == TRANSFORM
    assert (again.height, again.width, again.chunk) == (300, 260, 128)
    assert again.labels.chunks == (128, 128) and again.labels.dtype == np.uint8
    assert again.class_names == ("background", "water")


def test_xarray_and_rioxarray_read_crs_and_transform(mosaic):
    pytest.importorskip("rioxarray")
    ds = xr.open_zarr(mosaic.path, decode_coords="all", consolidated=False)
    labels = ds["labels"]
    assert labels.rio.crs.to_epsg() == 32633
    assert labels.rio.transform() == TRANSFORM
    assert float(ds.x[0]) == 500000.25 and float(ds.y[0]) == 4999999.75  # pixel centres
    assert int(labels.isel(y=0, x=200)) == 1


def test_unaligned_block_is_refused(mosaic):
    with pytest.raises(ValueError, match="not aligned"):
        write_block(mosaic, 10, 0, np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8))


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="GDAL command-line tools not installed (gdal-bin)")
def test_gdalinfo_reads_epsg_origin_and_pixel_size(mosaic):
    out = subprocess.run(
        ["gdalinfo", "-json", f'ZARR:"{mosaic.path}":/labels'], capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    assert info["size"] == [260, 300]
    assert info["geoTransform"] == [500000.0, 0.5, 0.0, 5000000.0, 0.0, -0.5]
    wkt = info["coordinateSystem"]["wkt"]
    assert 'ID["EPSG",32633]' in wkt


def test_zarr_v3_mosaic_has_one_shard_per_core_and_reads_in_xarray(tmp_path):
    pytest.importorskip("rioxarray")
    info = create_mosaic(
        tmp_path / "v3.zarr",
        height=600,
        width=520,
        chunk=256,
        crs=CRS.from_epsg(32633),
        transform=TRANSFORM,
        class_names=["background", "water"],
        zarr_format=3,
        scores=True,
    )
    assert info.labels.shards == (256, 256) and info.labels.chunks == (128, 128)
    assert info.group["scores"].shards == (2, 256, 256)
    for row, col, h, w in info.chunk_windows():
        write_block(
            info, row, col, np.full((h, w), 1, np.uint8), np.ones((h, w), np.uint8), np.full((2, h, w), 127, np.uint8)
        )
    ds = xr.open_zarr(tmp_path / "v3.zarr", decode_coords="all", consolidated=False, zarr_format=3)
    assert ds["labels"].rio.crs.to_epsg() == 32633 and ds["labels"].rio.transform() == TRANSFORM
    assert int(ds["labels"].sum()) == 600 * 520
    assert open_mosaic(tmp_path / "v3.zarr").grid == (3, 3)
