"""Shared fixtures: GeoTIFF factory, a tiny labelled scene and job, a shared Ray."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from shapely.geometry import Point, box

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
UTM33 = "EPSG:32633"
ORIGIN = Affine(0.5, 0, 500000.0, 0, -0.5, 5000000.0)


def real_raster(name: str) -> Path:
    """Path of a real GeoTIFF under ../shared/data/real, or skip the test."""
    path = REAL_DATA / name
    if not path.exists():
        pytest.skip(f"real test data not present: {path} (needs ../shared beside the project)")
    return path


def write_geotiff(path: Path, array: np.ndarray, *, crs: str | None = UTM33, transform: Affine = ORIGIN,
                  nodata=None, block: int = 64, colorinterp=None) -> Path:
    """Write ``array`` (bands, H, W) as a tiled, deflate-compressed GeoTIFF."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": array.shape[0],
               "dtype": array.dtype.name, "transform": transform, "compress": "deflate"}
    if crs:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if array.shape[1] >= block and array.shape[2] >= block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        if colorinterp:
            dst.colorinterp = colorinterp
    return path


@pytest.fixture
def make_geotiff(tmp_path):
    def make(name: str, array: np.ndarray, **kwargs) -> Path:
        return write_geotiff(tmp_path / name, array, **kwargs)

    return make


def tiny_scene(folder: Path, *, size: int = 192, seed: int = 0) -> tuple[Path, Path]:
    """A small RGB scene with water discs and vegetation squares, and its label polygons."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(6):
        x, y = rng.uniform(20, size - 20, 2)
        shapes.append(("vegetation", box(x - 12, y - 12, x + 12, y + 12)))
    for _ in range(5):
        x, y = rng.uniform(15, size - 15, 2)
        shapes.append(("water", Point(x, y).buffer(rng.uniform(6, 14))))
    # a water strip crossing the whole scene, so it crosses every chunk seam it meets
    shapes.append(("water", box(0, size * 0.45, size, size * 0.55)))
    geo = [(cls, _to_map(geom)) for cls, geom in shapes]
    labels = gpd.GeoDataFrame({"class": [c for c, _ in geo]}, geometry=[g for _, g in geo], crs=UTM33)
    from rasterio.features import rasterize

    index = {"background": 0, "water": 1, "vegetation": 2}
    truth = rasterize([(g, index[c]) for c, g in geo], out_shape=(size, size), transform=ORIGIN, fill=0, dtype="uint8")
    colours = np.array([[150, 130, 100], [40, 70, 160], [50, 140, 60]], np.float32)
    image = colours[truth] + rng.normal(0, 6, (size, size, 3))
    image = np.clip(image, 1, 255).astype(np.uint8).transpose(2, 0, 1)
    scene = write_geotiff(folder / "scene.tif", image, nodata=0)
    gpkg = folder / "labels.gpkg"
    labels.to_file(gpkg, layer="labels", driver="GPKG")
    return scene, gpkg


def _to_map(geom):
    """Pixel-space geometry → map coordinates of the tiny scene's grid."""
    from shapely import affinity

    return affinity.affine_transform(geom, [ORIGIN.a, ORIGIN.b, ORIGIN.d, ORIGIN.e, ORIGIN.c, ORIGIN.f])


def tiny_job(folder: Path, scene: Path, labels: Path, **overrides) -> Path:
    """A job over the tiny scene with a tiny, fast model."""
    job = {
        "name": "tiny",
        "output_dir": str(folder / "out"),
        "classes": ["background", "water", "vegetation"],
        "model": {"arch": "unet", "encoder": "resnet18",
                  "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
        "tiling": {"tile_size": 96, "halo": 16},
        "train": {"scenes": [{"image": str(scene), "labels": str(labels)}], "tile_size": 64, "batch_size": 4,
                  "epochs": 2, "steps_per_epoch": 3},
        "predict": {"scene": str(scene), "batch_size": 4},
        "evaluate": {"labels": str(labels)},
        "runtime": {"workers": 1, "cpus_per_worker": 1},
    }
    for key, value in overrides.items():
        job[key] = value
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for every test that needs it (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def local_cluster():
    """A real two-node Ray cluster on 127.0.0.1 (``ray start`` processes; see tests/localcluster.py).

    Its clients run with ``local_cluster.env()`` (the cluster's token). A test that stops a node
    restarts it (``restart_second``); ``local_cluster.ready()`` waits until both nodes are up.
    """
    from localcluster import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small convolutions gain nothing from threads, and spinning threads on shared cores cost a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
