"""Overview levels inside the mosaic, and the Cloud-Optimized GeoTIFF export."""

from __future__ import annotations

import json
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import InputRasterError, JobConfigError, StageError
from geoseg.io.cog import LABELS_NODATA, export_cog
from geoseg.io.mosaic import create_mosaic, open_mosaic, write_block
from geoseg.io.overviews import build_overviews, list_overviews, overview_factors, read_overview

TRANSFORM = Affine(0.5, 0, 500000.0, 0, -0.5, 5000000.0)
UTM33 = CRS.from_epsg(32633)
CLASSES = ["background", "water", "building", "road"]


def make_mosaic(path, labels, valid, *, chunk=128, zarr_format=2, classes=CLASSES):
    """A mosaic holding ``labels`` (0 written where invalid, as predict does) and ``valid``."""
    height, width = labels.shape
    info = create_mosaic(
        path,
        height=height,
        width=width,
        chunk=chunk,
        crs=UTM33,
        transform=TRANSFORM,
        class_names=classes,
        zarr_format=zarr_format,
    )
    for row, col, h, w in info.chunk_windows():
        v = valid[row : row + h, col : col + w].astype(np.uint8)
        write_block(info, row, col, labels[row : row + h, col : col + w].astype(np.uint8) * v, v)
    return info


def scene(height=700, width=530, classes=4, seed=0):
    """Blobby labels (3×3 blocks plus noise) with a large invalid corner and scattered nodata."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, classes, (height // 3 + 1, width // 3 + 1)), np.ones((3, 3), int))
    labels = (labels[:height, :width] + (rng.random((height, width)) < 0.3)) % classes
    valid = rng.random((height, width)) > 0.25
    valid[: height * 3 // 7, : width * 2 // 5] = False  # 700×530: rows 0:300, cols 0:212
    return labels.astype(np.uint8), valid.astype(np.uint8)


def reference_mode(labels, valid, factor, classes):
    """Brute force: count every class over each f×f block of the whole array."""
    h, w = -(-labels.shape[0] // factor), -(-labels.shape[1] // factor)
    lab = np.zeros((h * factor, w * factor), np.uint8)
    val = np.zeros_like(lab)
    lab[: labels.shape[0], : labels.shape[1]] = labels
    val[: labels.shape[0], : labels.shape[1]] = valid
    counts = np.stack(
        [((lab == k) & (val == 1)).reshape(h, factor, w, factor).sum(axis=(1, 3)) for k in range(classes)]
    )
    any_valid = counts.sum(axis=0) > 0
    return np.where(any_valid, counts.argmax(axis=0), 0).astype(np.uint8), any_valid.astype(np.uint8)


@pytest.fixture
def base(tmp_path):
    labels, valid = scene()
    info = make_mosaic(tmp_path / "m.zarr", labels, valid)
    return info, labels, valid


# --------------------------------------------------------------------------- overviews


def test_levels_shapes_chunks_and_multiscales(base):
    info, _, _ = base
    assert build_overviews(info.path) == [2, 4]  # 350 > 256, then 175 <= 256: stop
    assert list_overviews(info.path) == [2, 4]
    group = open_mosaic(info.path).group
    for factor, shape in ((2, (350, 265)), (4, (175, 133))):
        for name in ("labels", "valid"):
            arr = group[f"overviews/{factor}/{name}"]
            assert arr.shape == shape and arr.chunks == (128, 128) and arr.dtype == np.uint8
    (labels_entry,) = [e for e in group.attrs["multiscales"] if e["name"] == "labels"]
    assert [(d["path"], d["factor"]) for d in labels_entry["datasets"]] == [
        ("labels", 1),
        ("overviews/2/labels", 2),
        ("overviews/4/labels", 4),
    ]
    assert labels_entry["datasets"][2]["coordinateTransformations"][0]["scale"] == [-2.0, 2.0]
    # Pixel-centre translation, like the x/y coordinate arrays.
    assert labels_entry["datasets"][2]["coordinateTransformations"][1]["translation"] == [4999999.0, 500001.0]


def test_overview_factors_stop_at_min_side():
    assert overview_factors(700, 530, 256) == [2, 4]
    assert overview_factors(700, 530, 100) == [2, 4, 8]
    assert overview_factors(256, 100, 256) == []
    assert overview_factors(257, 1, 256) == [2]
    with pytest.raises(JobConfigError, match="min_side"):
        overview_factors(10, 10, 0)


def test_small_mosaic_gets_no_levels(tmp_path):
    labels, valid = scene(200, 120)
    info = make_mosaic(tmp_path / "s.zarr", labels, valid)
    assert build_overviews(info.path) == []
    assert list_overviews(info.path) == []


def test_mode_on_hand_checkable_pattern(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    valid = np.ones((8, 8), np.uint8)
    labels[0:2, 0:2] = [[1, 1], [2, 0]]  # plain majority → 1
    labels[0:2, 2:4] = [[1, 2], [2, 1]]  # 2–2 tie → lowest class, 1
    labels[0:2, 4:6] = [[0, 0], [3, 3]]  # the 0s are invalid: background must not win → 3
    valid[0:2, 4:6] = [[0, 0], [1, 1]]
    valid[0:2, 6:8] = 0  # nothing valid → label 0, valid 0
    labels[0:2, 6:8] = 2
    # A 4×4 block where the mode of modes is wrong: three 2×2 sub-blocks vote 1
    # (1,1,2,3 each) and one votes 2 (2,2,2,2): 7 pixels of 2 beat 6 of 1.
    labels[4:8, 4:8] = [[1, 1, 1, 1], [2, 3, 2, 3], [1, 1, 2, 2], [2, 3, 2, 2]]
    info = make_mosaic(tmp_path / "h.zarr", labels, valid, chunk=4)

    assert build_overviews(info.path, min_side=2) == [2, 4]
    over, ok, _ = read_overview(info.path, 2)
    assert over[0].tolist() == [1, 1, 3, 0] and ok[0].tolist() == [1, 1, 1, 0]
    over4, ok4, _ = read_overview(info.path, 4)
    assert over4[1, 1] == 2 and ok4.all()

    # The cheaper cascade (validity-weighted 2×2 mode of level 2) is exact at
    # factor 2 only; this block is where it differs.
    build_overviews(info.path, min_side=2, method="cascade")
    assert read_overview(info.path, 2)[0][0].tolist() == [1, 1, 3, 0]
    assert read_overview(info.path, 4)[0][1, 1] == 1


@pytest.mark.parametrize(
    ("chunk", "zarr_format", "height", "width"), [(128, 2, 700, 530), (75, 3, 301, 197), (3, 2, 33, 17)]
)
def test_exact_mode_matches_brute_force_at_every_level(tmp_path, chunk, zarr_format, height, width):
    labels, valid = scene(height, width, seed=chunk)
    info = make_mosaic(tmp_path / "b.zarr", labels, valid, chunk=chunk, zarr_format=zarr_format)
    factors = build_overviews(info.path, min_side=8)
    assert factors[-1] >= 8
    for factor in factors:
        got_labels, got_valid, _ = read_overview(info.path, factor)
        want_labels, want_valid = reference_mode(labels, valid, factor, len(CLASSES))
        np.testing.assert_array_equal(got_valid, want_valid, err_msg=f"valid at factor {factor}")
        np.testing.assert_array_equal(got_labels, want_labels, err_msg=f"labels at factor {factor}")


def test_invalid_blocks_are_invalid_and_zero(base):
    info, _, _ = base
    build_overviews(info.path)
    for factor in (2, 4):
        over, ok, _ = read_overview(info.path, factor)
        # rows 0:300, cols 0:200 of the base hold no valid pixel.
        assert not ok[: 300 // factor, : 200 // factor].any()
        assert not over[: 300 // factor, : 200 // factor].any()
        assert ok[-1, -1] == 1  # the ragged last block counts the pixels that exist


def test_overview_georeferencing(base):
    info, _, _ = base
    build_overviews(info.path)
    group = open_mosaic(info.path).group
    for factor in (2, 4):
        _, _, transform = read_overview(info.path, factor)
        assert transform == TRANSFORM @ Affine.scale(factor)
        assert transform.a == 0.5 * factor and transform.c == 500000.0 and transform.f == 5000000.0
        for name in ("labels", "valid"):
            attrs = group[f"overviews/{factor}/{name}"].attrs
            for key in ("_ARRAY_DIMENSIONS", "grid_mapping", "_CRS"):
                assert attrs[key] == group[name].attrs[key]
            assert Affine.from_gdal(*attrs["geoseg"]["transform"]) == transform
        level = group[f"overviews/{factor}"]
        assert float(level["x"][0]) == 500000.0 + 0.25 * factor  # pixel centres
        assert level["x"].shape == (-(-530 // factor),)


def test_overview_levels_open_in_gdal_and_rioxarray(base):
    info, _, _ = base
    build_overviews(info.path)
    if shutil.which("gdalinfo"):
        out = subprocess.run(
            ["gdalinfo", "-json", f'ZARR:"{info.path}":/overviews/4/labels'], capture_output=True, text=True, check=True
        ).stdout
        meta = json.loads(out)
        assert meta["size"] == [133, 175]
        assert meta["geoTransform"] == [500000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0]
        assert "32633" in json.dumps(meta["coordinateSystem"])
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    ds = xr.open_zarr(info.path, group="overviews/2", decode_coords="all", consolidated=False)
    assert ds["labels"].rio.crs.to_epsg() == 32633
    assert ds["labels"].rio.transform() == TRANSFORM @ Affine.scale(2)


def test_rebuild_replaces_levels_and_clears_a_crashed_partial(base):
    info, _, _ = base
    assert build_overviews(info.path, min_side=64) == [2, 4, 8, 16]
    (info.path / "_overviews_partial").mkdir()  # left behind by a killed run
    assert build_overviews(info.path) == [2, 4]
    assert list_overviews(info.path) == [2, 4]
    assert not (info.path / "overviews" / "8").exists()
    assert not (info.path / "_overviews_partial").exists()
    with pytest.raises(InputRasterError, match="factor 8"):
        read_overview(info.path, 8)


def test_memory_is_bounded_by_chunks_not_scene(tmp_path):
    labels, valid = scene(2048, 2048, seed=3)
    info = make_mosaic(tmp_path / "big.zarr", labels, valid, chunk=128)
    scene_bytes = labels.nbytes + valid.nbytes  # 8 MiB
    tracemalloc.start()
    try:
        build_overviews(info.path, min_side=32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < scene_bytes / 4, f"peak {peak} bytes for a {scene_bytes}-byte scene"


def test_read_overview_and_build_refuse_a_missing_mosaic(tmp_path):
    with pytest.raises(InputRasterError, match="not found"):
        build_overviews(tmp_path / "nope.zarr")
    with pytest.raises(InputRasterError, match="not found"):
        read_overview(tmp_path / "nope.zarr", 2)


# --------------------------------------------------------------------------- COG


def validate_with_gdal(path):
    """GDAL's own COG validator (python3-gdal, system Python), or None when unavailable."""
    python = shutil.which("python3", path="/usr/bin")
    if not python:
        return None
    probe = subprocess.run(
        [python, "-c", "import osgeo_utils.samples.validate_cloud_optimized_geotiff"], capture_output=True
    )
    if probe.returncode:
        return None
    code = (
        "import sys, json\n"
        "from osgeo_utils.samples.validate_cloud_optimized_geotiff import validate\n"
        "warnings, errors, details = validate(sys.argv[1], full_check=True)\n"
        "print(json.dumps({'warnings': warnings, 'errors': errors}))\n"
    )
    out = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("chunk", [128, 100])  # 100: not a TIFF tile size, staged in 512 tiles
def test_cog_round_trips_labels_with_nodata(tmp_path, chunk):
    labels, valid = scene()
    info = make_mosaic(tmp_path / "m.zarr", labels, valid, chunk=chunk)
    out = export_cog(info.path, tmp_path / "out" / "labels.tif")
    assert out == tmp_path / "out" / "labels.tif"
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.tif"]  # no temporaries left
    with rasterio.open(out) as src:
        assert src.crs == UTM33 and src.transform == TRANSFORM
        assert (src.height, src.width, src.count, src.dtypes[0]) == (700, 530, 1, "uint8")
        assert src.nodata == LABELS_NODATA
        data = src.read(1)
        np.testing.assert_array_equal(data[valid == 1], labels[valid == 1])
        assert (data[valid == 0] == LABELS_NODATA).all()
        assert (src.read_masks(1) == valid * 255).all()
        assert src.block_shapes == [(512, 512)] and src.profile["tiled"]
        assert src.overviews(1) == [2]
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.compression.name.lower() == "deflate"
        assert json.loads(src.tags()["CLASS_NAMES"]) == CLASSES
        assert src.tags(1)["CLASS_1"] == "water"
        assert src.descriptions == ("class index",)
    report = validate_with_gdal(out)
    if report is not None:
        assert report["errors"] == [] and report["warnings"] == [], report


def test_cog_overviews_use_mode_and_skip_nodata(tmp_path):
    labels = np.zeros((1024, 1024), np.uint8)
    valid = np.zeros_like(labels)
    labels[::2, ::2], valid[::2, ::2] = 3, 1  # one valid pixel per 2×2 block, three nodata
    info = make_mosaic(tmp_path / "n.zarr", labels, valid)
    out = export_cog(info.path, tmp_path / "n.tif")
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2]
        assert (src.read(1, out_shape=(512, 512)) == 3).all()


def test_cog_of_valid_array_and_overwrite(tmp_path, base):
    info, _, valid = base
    target = tmp_path / "valid.tif"
    target.write_bytes(b"stale")
    export_cog(info.path, target, array="valid", overview_resampling="nearest")
    with rasterio.open(target) as src:
        assert src.nodata is None
        np.testing.assert_array_equal(src.read(1), valid)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.tags()["GEOSEG_ARRAY"] == "valid"


def test_cog_refuses_bad_input_in_one_line(tmp_path, base):
    info, _, _ = base
    with pytest.raises(InputRasterError, match=r"nope\.zarr.*not found") as err:
        export_cog(tmp_path / "nope.zarr", tmp_path / "x.tif")
    assert "\n" not in str(err.value)
    with pytest.raises(InputRasterError, match=r"no array 'probs'.*use one of labels, valid, scores") as err:
        export_cog(info.path, tmp_path / "x.tif", array="probs")
    assert str(info.path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputRasterError, match=r"no scores array.*predict\.scores: true"):
        export_cog(info.path, tmp_path / "x.tif", array="scores")
    with pytest.raises(JobConfigError, match="overview_resampling 'median'"):
        export_cog(info.path, tmp_path / "x.tif", overview_resampling="median")
    assert not (tmp_path / "x.tif").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StageError, match="writing the COG"):  # its folder is a file
        export_cog(info.path, blocker / "x.tif")


def test_cog_of_scores_is_one_masked_band_per_class(tmp_path):
    labels, valid = scene(300, 260)
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 256, (len(CLASSES), 300, 260)).astype(np.uint8)
    info = create_mosaic(
        tmp_path / "s.zarr",
        height=300,
        width=260,
        chunk=128,
        crs=UTM33,
        transform=TRANSFORM,
        class_names=CLASSES,
        scores=True,
    )
    for row, col, h, w in info.chunk_windows():
        write_block(
            info,
            row,
            col,
            labels[row : row + h, col : col + w],
            valid[row : row + h, col : col + w],
            scores[:, row : row + h, col : col + w],
        )
    out = export_cog(info.path, tmp_path / "scores.tif", array="scores")
    with rasterio.open(out) as src:
        assert src.count == len(CLASSES) and src.nodata is None
        np.testing.assert_array_equal(src.read(), scores)
        assert (src.dataset_mask() == valid * 255).all()
        assert src.descriptions[1] == "probability of water"
        assert src.scales == (1 / 255,) * len(CLASSES)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    report = validate_with_gdal(out)
    if report is not None:
        assert report["errors"] == [] and report["warnings"] == [], report
