"""Flood extent: the truth table, both references against whole-scene computations, resume, georeferencing."""

from __future__ import annotations

import pickle
import shutil

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from scipy import ndimage

from geoseg.impact import PermanentWater, PreEventMosaic, flood_chunk, write_flood
from geoseg.impact.flood import FLOOD, FLOOD_DONE
from geoseg.impact.flood_overviews import flood_mode_2x2, write_flood_overviews
from geoseg.io.mosaic import create_mosaic, mark_done, member_array, open_mosaic, write_block
from geoseg.io.overviews import build_overviews
from geoseg.vectorize.classes import in_process

CLASSES = ("background", "water", "building")
WATER = 1
UTM = CRS.from_epsg(32633)
GRID = from_origin(300_000.0, 5_000_000.0, 2.0, 2.0)  # 2 m pixels (4 m²), off the central meridian: grids turn
SIZE, CHUNK = 96, 32


def make_mosaic(path, labels, valid, *, crs=UTM, transform=GRID, chunk=CHUNK):
    mosaic = create_mosaic(
        path,
        height=labels.shape[0],
        width=labels.shape[1],
        chunk=chunk,
        crs=crs,
        transform=transform,
        class_names=CLASSES,
    )
    for row, col, h, w in mosaic.chunk_windows():
        block = np.s_[row : row + h, col : col + w]
        write_block(mosaic, row, col, labels[block], valid[block])
        mark_done(mosaic, row, col)
    return path


def disc(cy, cx, r, size=SIZE):
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def post_event():
    """Water: a big lake crossing chunk seams and a river; a building; no data in the top-left corner."""
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[disc(48, 50, 30)] = WATER
    labels[70:80, :] = WATER
    labels[10:20, 70:85] = 2
    valid = np.ones_like(labels)
    valid[:12, :20] = 0
    labels[valid == 0] = 0
    return labels, valid


def pre_event():
    """Before: a smaller lake (the rest of it is flood) and the river; no data in the bottom-right corner."""
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[disc(45, 47, 16)] = WATER
    labels[72:78, :] = WATER
    valid = np.ones_like(labels)
    valid[85:, 80:] = 0
    labels[valid == 0] = 0
    return labels, valid


def test_flood_chunk_truth_table():
    #                  water now, before known dry    water before   no post data   unknown before
    labels = np.array([[1, 1, 0, 0, 1, 0, 1]], np.uint8)
    valid = np.array([[1, 1, 1, 1, 0, 1, 1]], np.uint8)
    before = np.array([[0, 1, 0, 1, 0, 0, 1]], bool)
    known = np.array([[1, 1, 1, 1, 1, 0, 0]], bool)
    got = flood_chunk(labels, valid, WATER, before, known)
    assert got.dtype == np.uint8
    assert got.tolist() == [[2, 1, 0, 0, 255, 255, 255]]
    other_class = flood_chunk(np.array([[2]], np.uint8), np.array([[1]], np.uint8), WATER, before[:, :1], known[:, :1])
    assert other_class.tolist() == [[0]]  # a building is not water, whatever was there before


def _permanent_layer(path):
    """Polygons in EPSG:4326 (another CRS than the mosaic's): one across chunk seams, one far outside."""
    left, top = GRID.c, GRID.f
    inside = shapely.Polygon(
        [(left + 40, top - 30), (left + 150, top - 50), (left + 120, top - 140), (left + 30, top - 120)]
    )
    river = shapely.box(left - 10, top - 158, left + 200, top - 142)
    far = shapely.box(left + 5000, top - 5000, left + 5100, top - 4900)
    frame = gpd.GeoDataFrame({"name": ["lake", "river", "far"]}, geometry=[inside, river, far], crs=UTM)
    frame.to_crs(4326).to_file(path, layer="water", driver="GPKG")
    return path


def test_permanent_water_equals_the_whole_layer_rasterized_once(tmp_path):
    labels, valid = post_event()
    mosaic = make_mosaic(tmp_path / "post.zarr", labels, valid)
    layer = _permanent_layer(tmp_path / "permanent.gpkg")

    summary = write_flood(mosaic, PermanentWater(layer, "water"), WATER)

    whole = gpd.read_file(layer, layer="water").to_crs(UTM)
    before = rasterio.features.rasterize(((g, 1) for g in whole.geometry), out_shape=(SIZE, SIZE), transform=GRID)
    want = flood_chunk(labels, valid, WATER, before.astype(bool), np.ones((SIZE, SIZE), bool))
    got = np.asarray(open_mosaic(mosaic).array(FLOOD)[:])
    assert (got == 2).any() and (got == 1).any() and (got == 255).any()  # every code is exercised
    np.testing.assert_array_equal(got, want)
    assert summary.pixels.flood == int((want == 2).sum()) and summary.pixels.permanent == int((want == 1).sum())
    assert summary.pixels.unknown == int((want == 255).sum())
    assert summary.flood_m2 == pytest.approx(4.0 * summary.pixels.flood)
    assert summary.chunks == summary.chunks_computed == 9


def _warped_mosaic(path, labels, valid, crs):
    """``labels``/``valid`` warped (nearest) onto a grid in ``crs`` of about the same resolution."""
    left, bottom, right, top = rasterio.transform.array_bounds(SIZE, SIZE, GRID)
    transform, width, height = rasterio.warp.calculate_default_transform(UTM, crs, SIZE, SIZE, left, bottom, right, top)
    out = []
    for band in (labels, valid):
        dst = np.zeros((height, width), np.uint8)
        rasterio.warp.reproject(
            band,
            dst,
            src_transform=GRID,
            src_crs=UTM,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.nearest,
            src_nodata=None,
            dst_nodata=0,
        )
        out.append(dst)
    return make_mosaic(path, out[0], out[1], crs=crs, transform=transform, chunk=24)


def test_pre_event_in_another_crs_matches_the_same_grid_except_at_edges(tmp_path):
    labels, valid = post_event()
    pre_labels, pre_valid = pre_event()
    post = make_mosaic(tmp_path / "post.zarr", labels, valid)
    aligned_post = tmp_path / "post_copy.zarr"
    shutil.copytree(post, aligned_post)
    same_grid = make_mosaic(tmp_path / "pre.zarr", pre_labels, pre_valid)
    mercator = _warped_mosaic(tmp_path / "pre_3857.zarr", pre_labels, pre_valid, CRS.from_epsg(3857))

    write_flood(aligned_post, PreEventMosaic(same_grid), WATER)
    # As Ray does: each task gets its arguments pickled, the references' open mosaics left behind.
    pickled = lambda function, arguments: (function(*pickle.loads(pickle.dumps(a))) for a in arguments)
    write_flood(post, PreEventMosaic(mercator), WATER, run_tasks=pickled)
    aligned = np.asarray(open_mosaic(aligned_post).array(FLOOD)[:])
    warped = np.asarray(open_mosaic(post).array(FLOOD)[:])

    # On its own grid the pre-event mosaic gives exactly the arithmetic on whole arrays.
    want = flood_chunk(labels, valid, WATER, pre_labels == WATER, pre_valid > 0)
    np.testing.assert_array_equal(aligned, want)
    # Through another CRS, nearest picks may move an edge by a pixel; everywhere else the same.
    states = np.pad(np.where(pre_valid > 0, pre_labels == WATER, 2).astype(np.uint8), 1, constant_values=3)
    edges = (ndimage.grey_dilation(states, size=3) != ndimage.grey_erosion(states, size=3))[1:-1, 1:-1]
    near_edges = ndimage.binary_dilation(edges, iterations=1)
    assert near_edges.mean() < 0.25 and (want[~near_edges] == 2).sum() > 500
    np.testing.assert_array_equal(warped[~near_edges], aligned[~near_edges])


def test_chunks_outside_the_pre_event_scene_are_unknown(tmp_path):
    labels, valid = post_event()
    post = make_mosaic(tmp_path / "post.zarr", labels, valid)
    half = from_origin(GRID.c, GRID.f - 48 * 2.0, 2.0, 2.0)  # covers only the bottom half of the post scene
    pre = make_mosaic(
        tmp_path / "pre.zarr", np.zeros((48, SIZE), np.uint8), np.ones((48, SIZE), np.uint8), transform=half
    )
    write_flood(post, PreEventMosaic(pre), WATER)
    got = np.asarray(open_mosaic(post).array(FLOOD)[:])
    assert (got[:48] == 255).all()
    np.testing.assert_array_equal(
        got[48:], flood_chunk(labels[48:], valid[48:], WATER, np.zeros((48, SIZE), bool), np.ones((48, SIZE), bool))
    )


def test_a_killed_run_resumes_at_the_missing_chunks(tmp_path):
    labels, valid = post_event()
    post = make_mosaic(tmp_path / "post.zarr", labels, valid)
    whole = tmp_path / "whole.zarr"
    shutil.copytree(post, whole)
    reference = PermanentWater(_permanent_layer(tmp_path / "permanent.gpkg"), "water")

    def killed_after_first_band(function, arguments):
        yield function(*arguments[0])
        raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        write_flood(post, reference, WATER, run_tasks=killed_after_first_band, bands=3)
    assert np.asarray(open_mosaic(post).array(FLOOD_DONE)[:]).tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]

    resumed = write_flood(post, reference, WATER, run_tasks=in_process, bands=3)
    uninterrupted = write_flood(whole, reference, WATER, bands=3)
    assert resumed.chunks_computed == 6 and uninterrupted.chunks_computed == 9
    assert resumed.pixels == uninterrupted.pixels  # chunks done before are counted too
    np.testing.assert_array_equal(open_mosaic(post).array(FLOOD)[:], open_mosaic(whole).array(FLOOD)[:])

    assert write_flood(post, reference, WATER).chunks_computed == 0  # finished: nothing to redo
    other_class = write_flood(post, reference, 2)  # made from something else: started again, never mixed
    assert other_class.chunks_computed == 9 and other_class.pixels.flood == int(((labels == 2) & (valid > 0)).sum())


def test_flood_is_georeferenced_like_labels(tmp_path):
    labels, valid = post_event()
    post = make_mosaic(tmp_path / "post.zarr", labels, valid)
    write_flood(post, PermanentWater(_permanent_layer(tmp_path / "permanent.gpkg"), "water"), WATER)
    mosaic = open_mosaic(post)
    flood, kept = mosaic.array(FLOOD), mosaic.labels
    assert flood.chunks == kept.chunks and flood.shape == kept.shape and flood.dtype == np.uint8
    for name in ("grid_mapping", "_CRS", "coordinates", "_ARRAY_DIMENSIONS"):
        assert flood.attrs[name] == kept.attrs[name]
    assert CRS.from_wkt(flood.attrs["_CRS"]["wkt"]) == UTM
    assert flood.attrs["flag_values"] == [0, 1, 2, 255]
    with rasterio.open(f'ZARR:"{post}":/{FLOOD}') as gdal_flood, rasterio.open(f'ZARR:"{post}":/labels') as gdal_labels:
        assert gdal_flood.crs == gdal_labels.crs == UTM
        assert gdal_flood.transform == gdal_labels.transform == GRID
        np.testing.assert_array_equal(gdal_flood.read(1), np.asarray(flood[:]))


def test_flood_mode_keeps_flood_on_ties_and_leaves_unknown_out():
    codes = np.array(
        [
            [0, 2, 1, 1, 255, 255, 0],
            [2, 0, 1, 0, 255, 1, 0],
        ],
        np.uint8,
    )
    # Blocks: {0,2,2,0} tie → 2; {1,1,1,0} → 1; {255,255,255,1} → 1; the odd edge {0,0} → 0.
    np.testing.assert_array_equal(flood_mode_2x2(codes), [[2, 1, 1, 0]])
    np.testing.assert_array_equal(flood_mode_2x2(np.full((2, 2), 255, np.uint8)), [[255]])


def test_flood_overviews_are_modes_of_the_level_below_beside_the_labels_levels(tmp_path):
    labels, valid = post_event()
    post = make_mosaic(tmp_path / "post.zarr", labels, valid)
    pre_labels, pre_valid = pre_event()
    write_flood(post, PreEventMosaic(make_mosaic(tmp_path / "pre.zarr", pre_labels, pre_valid)), WATER)
    assert build_overviews(post, min_side=16) == [2, 4, 8]
    assert write_flood_overviews(str(post)) == [2, 4, 8]
    mosaic = open_mosaic(post)
    below = np.asarray(mosaic.array(FLOOD)[:])
    for factor in (2, 4, 8):
        level = np.asarray(member_array(mosaic.group, f"overviews/{factor}/flood")[:])
        np.testing.assert_array_equal(level, flood_mode_2x2(below))
        with rasterio.open(f'ZARR:"{post}":/overviews/{factor}/flood') as gdal_level:
            assert gdal_level.crs == UTM and gdal_level.transform == GRID @ Affine.scale(factor)
        below = level
    entry = next(e for e in mosaic.group.attrs["multiscales"] if e["name"] == "flood")
    assert [d["path"] for d in entry["datasets"]] == [
        "flood",
        "overviews/2/flood",
        "overviews/4/flood",
        "overviews/8/flood",
    ]
    stamp = (post / "overviews" / "2" / "flood" / ".zattrs").stat().st_mtime_ns
    write_flood_overviews(str(post))  # current: nothing written again
    assert (post / "overviews" / "2" / "flood" / ".zattrs").stat().st_mtime_ns == stamp
