"""Instances from semantic models: whole-mosaic connected components, one id each, whatever the chunks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
import zarr
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from geoseg.config import Job
from geoseg.io.mosaic import create_mosaic, write_block
from geoseg.stages.vectorize import run_vectorize
from geoseg.vectorize import SeamMerger, polygonize_chunk, vectorize_mosaic
from geoseg.vectorize.components import first_pixels, with_ids
from geoseg.vectorize.export import regions_to_frame

PIXEL = 0.5
PIXEL_AREA = PIXEL * PIXEL
UTM = Affine(PIXEL, 0, 500000.0, 0, -PIXEL, 5000000.0)
CLASSES = ("background", "water", "building", "forest")
WATER, BUILDING, FOREST = 1, 2, 3
VECTORIZED = (WATER, BUILDING, FOREST)


def make_mosaic(path, labels, valid=None, *, chunk=16, scores=None, zarr_format=2):
    """A mosaic holding ``labels`` (and ``scores``, class × y × x uint8), written chunk by chunk."""
    valid = np.ones_like(labels) if valid is None else valid
    height, width = labels.shape
    mosaic = create_mosaic(
        path,
        height=height,
        width=width,
        chunk=chunk,
        crs=CRS.from_epsg(32633),
        transform=UTM,
        class_names=CLASSES,
        scores=scores is not None,
        zarr_format=zarr_format,
    )
    for row, col, h, w in mosaic.chunk_windows():
        write_block(
            mosaic,
            row,
            col,
            labels[row : row + h, col : col + w],
            valid[row : row + h, col : col + w],
            None if scores is None else scores[:, row : row + h, col : col + w],
        )
    return path


def instances(tmp_path, labels, valid=None, *, chunk=16, name="run", scores=None, zarr_format=2, **kwargs):
    """Vectorize with instances; return (outputs, instance raster, table, polygons)."""
    folder = tmp_path / name
    folder.mkdir()
    mosaic = make_mosaic(folder / "mosaic.zarr", labels, valid, chunk=chunk, scores=scores, zarr_format=zarr_format)
    out = vectorize_mosaic(mosaic, folder / "vectors", instances_table=folder / "instances.parquet", **kwargs)
    raster = zarr.open_group(str(mosaic), mode="r")["instances"][:]
    return out, raster, pd.read_parquet(folder / "instances.parquet"), pyogrio.read_dataframe(out.vectors)


def reference(labels, valid=None):
    """Whole-array 4-connected labelling of every vectorized class, ids offset per class."""
    keep = np.ones(labels.shape, bool) if valid is None else valid.astype(bool)
    ref = np.zeros(labels.shape, dtype=np.int64)
    count = 0
    for class_id in VECTORIZED:
        local, n = ndimage.label(keep & (labels == class_id))
        ref[local > 0] = local[local > 0] + count
        count += n
    return ref, count


def assert_same_partition(raster, ref, count):
    """The ids and the reference labels name the same pixel sets: a bijection between them."""
    assert ((raster > 0) == (ref > 0)).all()
    pairs = np.unique(np.stack([raster[ref > 0], ref[ref > 0]]), axis=1)
    assert pairs.shape[1] == count  # each reference region maps to one id ...
    assert len(np.unique(pairs[0])) == count and len(np.unique(pairs[1])) == count  # ... and back


def blobs(seed, shape=(90, 110), sigma=2.5):
    """Smooth random classes: blobs of every size, many crossing 16-px chunk seams, some touching diagonally."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return np.digitize(field, np.quantile(field, [0.4, 0.6, 0.8])).astype(np.uint8)


def snake(shape=(100, 100), arm=4, gap=4):
    """One water body winding back and forth through every chunk row (a serpentine), plus a ring."""
    lab = np.zeros(shape, dtype=np.uint8)
    height, width = shape
    rows = list(range(2, height - arm - 2, arm + gap))
    for i, row in enumerate(rows):
        lab[row : row + arm, 2 : width - 2] = WATER
        if i + 1 < len(rows):  # link to the next arm, alternately at the right and the left end
            col = width - 2 - arm if i % 2 == 0 else 2
            lab[row : rows[i + 1] + arm, col : col + arm] = WATER
    return lab


def first_pixel(raster, ident):
    return divmod(int(np.argmax((raster == ident).ravel())), raster.shape[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ids_equal_whole_array_labelling_on_random_blobs(tmp_path, seed):
    lab = blobs(seed)
    valid = np.ones_like(lab)
    valid[40:47, 5:60] = 0  # invalid pixels split regions and belong to none
    out, raster, table, gdf = instances(tmp_path, lab, valid)
    ref, count = reference(lab, valid)
    assert count > 50  # a real test: many regions, many of them across seams
    assert raster.dtype == np.uint32
    assert_same_partition(raster, ref, count)
    assert out.instances == out.features == len(table) == len(gdf) == count


def test_snake_across_every_chunk_is_one_id(tmp_path):
    lab = np.zeros((100, 150), dtype=np.uint8)
    lab[:, :100] = snake()
    lab[20:80, 105:145] = FOREST  # a forest ring around a lake, across row seams 32, 48, 64 and column seam 112
    lab[26:74, 111:139] = WATER  # the lake: water, but not the snake's
    lab[30:70, 115:135] = 0  # with an island
    assert ndimage.label(lab == WATER)[1] == 2
    _, raster, table, gdf = instances(tmp_path, lab)
    water = raster[lab == WATER]
    assert len(np.unique(water)) == 2
    body = table.loc[table["area_px"].idxmax()]
    assert body["id"] == 1 and body["class"] == "water"
    rows, cols = np.nonzero(raster == body["id"])
    assert rows.max() - rows.min() > 80 and cols.max() - cols.min() > 80  # it spans the whole mosaic
    assert body["area_px"] == len(rows)
    ring = table[table["class"] == "forest"]
    assert len(ring) == 1 and ring["area_px"].iloc[0] == (lab == FOREST).sum()
    assert sorted(gdf["id"]) == sorted(table["id"])


def test_ids_run_1_to_n_in_order_of_first_pixel(tmp_path):
    lab = blobs(3)
    _, raster, table, _ = instances(tmp_path, lab)
    ids = np.unique(raster[raster > 0])
    assert ids.tolist() == list(range(1, len(ids) + 1)) == table["id"].tolist()
    firsts = [first_pixel(raster, i) for i in ids]
    assert firsts == sorted(firsts)


def test_table_boxes_areas_and_classes_match_the_pixels(tmp_path):
    lab = blobs(4)
    _, raster, table, _ = instances(tmp_path, lab)
    boxes = ndimage.find_objects(raster.astype(np.int64))
    for row in table.to_dict("records"):
        mask = raster == row["id"]
        box = boxes[row["id"] - 1]
        assert (row["row_min"], row["row_max"], row["col_min"], row["col_max"]) == (
            box[0].start,
            box[0].stop,
            box[1].start,
            box[1].stop,
        )
        assert row["area_px"] == mask.sum()
        assert row["area_m2"] == pytest.approx(mask.sum() * PIXEL_AREA)
        assert (lab[mask] == row["class_id"]).all() and row["class"] == CLASSES[row["class_id"]]
    assert table["score"].isna().all()  # no scores in the mosaic


def test_score_is_the_mean_class_probability_over_the_region(tmp_path):
    lab = blobs(5, shape=(50, 60))
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 256, size=(len(CLASSES), *lab.shape), dtype=np.uint8)
    _, raster, table, _ = instances(tmp_path, lab, scores=scores)
    own = np.take_along_axis(scores, lab[None].astype(np.intp), axis=0)[0] / 255.0
    for row in table.itertuples():
        assert row.score == pytest.approx(own[raster == row.id].mean(), rel=1e-6)
    assert table["score"].dtype == np.float32


def test_polygon_ids_match_the_raster(tmp_path):
    lab = blobs(6)
    _, raster, table, gdf = instances(tmp_path, lab)
    counts = np.bincount(raster.ravel())
    assert gdf["id"].tolist() == list(range(1, len(gdf) + 1))  # features come in id order
    for ident, class_id, geom in zip(gdf["id"], gdf["class_id"], gdf.geometry, strict=True):
        assert geom.area / PIXEL_AREA == pytest.approx(counts[ident])
        # The polygon covers its id's pixels: test one of them, by its centre.
        row, col = first_pixel(raster, ident)
        assert geom.contains(shapely.Point(UTM @ (col + 0.5, row + 0.5)))
        assert table.loc[table["id"] == ident, "class_id"].item() == class_id


def test_min_area_drops_a_region_from_raster_table_and_polygons_alike(tmp_path):
    lab = blobs(7)
    ref, count = reference(lab)
    sizes = np.bincount(ref.ravel())[1:]
    threshold_px = int(np.median(sizes))
    out, raster, table, gdf = instances(tmp_path, lab, min_area_m2=threshold_px * PIXEL_AREA)
    kept = np.flatnonzero(sizes >= threshold_px) + 1
    assert 0 < len(kept) < count
    assert_same_partition(raster, np.where(np.isin(ref, kept), ref, 0), len(kept))
    assert table["id"].tolist() == list(range(1, len(kept) + 1)) == sorted(gdf["id"])
    assert (table["area_px"] >= threshold_px).all() and out.instances == out.features == len(kept)
    # The surviving regions keep their relative order: ids are renumbered without gaps.
    firsts = [first_pixel(raster, i) for i in table["id"]]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("chunk", [24, 64, 128])
def test_chunk_size_changes_neither_partition_nor_numbering(tmp_path, chunk):
    lab = blobs(8)
    _, small, small_table, small_gdf = instances(tmp_path, lab, chunk=16, name="small")
    _, other, other_table, other_gdf = instances(tmp_path, lab, chunk=chunk, name="other")
    np.testing.assert_array_equal(small, other)
    pd.testing.assert_frame_equal(small_table, other_table)
    assert small_gdf["id"].tolist() == other_gdf["id"].tolist()
    assert shapely.equals(np.asarray(small_gdf.geometry), np.asarray(other_gdf.geometry)).all()


def test_zarr_v3_shards_and_rerun_give_the_same_ids(tmp_path):
    lab = blobs(9, shape=(40, 50))
    _, v2, table, _ = instances(tmp_path, lab, name="v2")
    _, v3, v3_table, _ = instances(tmp_path, lab, name="v3", zarr_format=3)
    np.testing.assert_array_equal(v2, v3)
    pd.testing.assert_frame_equal(table, v3_table)
    # A rerun replaces the array and the table.
    again = vectorize_mosaic(
        tmp_path / "v2" / "mosaic.zarr",
        tmp_path / "v2" / "vectors",
        instances_table=tmp_path / "v2" / "instances.parquet",
    )
    assert again.instances == len(table)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "v2" / "mosaic.zarr"))["instances"][:], v2)


def test_simplified_polygons_keep_their_ids(tmp_path):
    lab = blobs(10)
    _, raster, table, gdf = instances(tmp_path, lab, simplify_m=1.0)
    assert gdf["id"].tolist() == table["id"].tolist()
    for ident, geom in zip(gdf["id"], gdf.geometry, strict=True):
        row, col = first_pixel(raster, ident)
        pixels = (raster == ident).sum() * PIXEL_AREA
        assert geom.distance(shapely.Point(UTM @ (col + 0.5, row + 0.5))) <= 1.0 + 1e-9
        assert geom.area == pytest.approx(pixels, abs=2.0 + pixels * 0.5)


def test_class_filter_numbers_only_the_chosen_classes(tmp_path):
    lab = blobs(11)
    _, raster, table, _ = instances(tmp_path, lab, classes=["water"])
    assert set(table["class"]) == {"water"}
    assert ((raster > 0) == (lab == WATER)).all()


def test_progress_covers_both_passes(tmp_path):
    calls = []
    instances(tmp_path, blobs(12, shape=(40, 30)), progress=lambda done, total: calls.append((done, total)))
    # After each band (here one chunk row) of each pass, out of both passes' rows.
    assert calls == [(i, 6) for i in range(1, 7)]


def test_empty_mosaic_writes_empty_instances(tmp_path):
    out, raster, table, gdf = instances(tmp_path, np.zeros((40, 40), dtype=np.uint8))
    assert out.instances == 0 and len(table) == 0 and (raster == 0).all()
    assert "id" in gdf.columns and len(gdf) == 0


def test_first_pixel_of_pixel_polygons():
    lab = np.zeros((8, 8), dtype=np.uint8)
    lab[2, 5:7] = 1
    lab[3:6, 1:7] = 1  # the top row's first pixel is (2, 5), not the box corner (2, 1)
    lab[4, 3] = 0  # a hole
    pieces = polygonize_chunk(lab, np.ones_like(lab), 0, 0, [1])
    rows, cols = first_pixels(pieces.polygons[1:])
    assert (rows.tolist(), cols.tolist()) == ([2], [5])


def test_merger_reports_each_piece_region():
    lab = np.zeros((8, 8), dtype=np.uint8)
    lab[1:7, 1] = 1  # one region through both chunk rows
    lab[1, 5] = 1  # a one-pixel region in the top-right chunk
    merger = SeamMerger(8, 8, track_pieces=True)
    chunks = []
    for row in (0, 4):
        for col in (0, 4):
            pieces = polygonize_chunk(lab[row : row + 4, col : col + 4], np.ones((4, 4)), row, col, [1])
            merger.add(pieces)
            chunks.append(pieces.count)
        if row == 0:
            with pytest.raises(ValueError, match="finished"):
                merger.chunk_regions(0, chunks[0])
        merger.end_row()
    # Region 0: the dot, closed after the first row; region 1: the bar, closed at the end.
    assert [merger.chunk_regions(i, n).tolist() for i, n in enumerate(chunks)] == [[-1, 1], [-1, 0], [-1, 1], [-1]]
    with pytest.raises(ValueError, match="components"):
        merger.chunk_regions(0, 2)
    with pytest.raises(ValueError, match="track_pieces"):
        SeamMerger(8, 8).chunk_regions(0, 0)


def test_ids_follow_rows_when_the_frame_drops_one():
    squares = [(WATER, shapely.box(col, 0, col + 2, 2)) for col in (0, 4, 8)]
    frame = regions_to_frame(squares, transform=UTM, crs=CRS.from_epsg(32633), class_names=CLASSES)
    assert with_ids(frame, squares, UTM)["id"].tolist() == [1, 2, 3]
    dropped = frame.drop(index=1).reset_index(drop=True)  # as if simplification had collapsed region 2
    assert with_ids(dropped, squares, UTM)["id"].tolist() == [1, 3]


def test_stage_writes_instances_when_asked(tmp_path):
    lab = blobs(13, shape=(40, 40))
    make_mosaic(tmp_path / "mosaic.zarr", lab)
    job = Job(
        name="t",
        output_dir=tmp_path,
        classes=list(CLASSES),
        stages=["vectorize"],
        predict={"scene": tmp_path / "scene.tif"},
        vectorize={"instances": True},
    )
    lines = []
    result = run_vectorize(job, log=lines.append)
    _, count = reference(lab)
    assert result["instances"] == count and (tmp_path / "instances.parquet").is_file()
    assert any(line.startswith(f"vectorize: {count} instances") for line in lines)
    assert "instances" in zarr.open_group(str(tmp_path / "mosaic.zarr"))
    off = job.model_copy(update={"output_dir": tmp_path / "off", "vectorize": type(job.vectorize)()})
    make_mosaic(tmp_path / "off" / "mosaic.zarr", lab)
    assert "instances" not in run_vectorize(off, log=lines.append)
    assert not (tmp_path / "off" / "instances.parquet").exists()
