"""The confusion counts: the same integers in one process, in bands, and as parallel Ray tasks."""

import numpy as np
import pytest
import rasterio

from geoseg.evaluate.confusion import band_confusion, chunk_row_bands
from tests.factories import scene_mosaic, write_geotiff

SIZE, CHUNK = 200, 64


@pytest.fixture
def scored(tmp_path):
    """A mosaic of random labels with invalid pixels, and a truth raster of random labels on its grid."""
    rng = np.random.default_rng(3)
    scene = write_geotiff(tmp_path / "scene.tif", np.ones((3, SIZE, SIZE), np.uint8))
    mosaic = scene_mosaic(tmp_path / "mosaic.zarr", scene, CHUNK)
    labels = rng.integers(0, 3, (SIZE, SIZE), dtype=np.uint8)
    valid = (rng.random((SIZE, SIZE)) > 0.1).astype(np.uint8)
    mosaic.labels[:] = labels * valid
    mosaic.valid[:] = valid
    truth = rng.integers(0, 3, (SIZE, SIZE), dtype=np.uint8)
    truth_path = write_geotiff(tmp_path / "truth.tif", truth)
    expected = np.zeros((3, 3), np.int64)
    np.add.at(expected, (truth[valid > 0], labels[valid > 0]), 1)  # independent: every valid pixel once
    return tmp_path / "mosaic.zarr", truth_path, expected


def test_bands_cover_every_chunk_row_once():
    assert chunk_row_bands(200, 64, 1) == [(0, 200)]
    assert chunk_row_bands(200, 64, 2) == [(0, 128), (128, 200)]
    assert chunk_row_bands(200, 64, 8) == [(0, 64), (64, 128), (128, 192), (192, 200)]


def test_bands_sum_to_the_whole(scored):
    mosaic, truth, expected = scored
    whole = band_confusion(mosaic, truth, 0, SIZE)
    np.testing.assert_array_equal(whole, expected)
    parts = [band_confusion(mosaic, truth, a, b) for a, b in chunk_row_bands(SIZE, CHUNK, 3)]
    np.testing.assert_array_equal(np.sum(parts, axis=0), expected)


def test_two_workers_count_what_one_counts(scored, ray_local):
    from geoseg.stages.evaluate import mosaic_confusion

    mosaic, truth, expected = scored
    one, names = mosaic_confusion(mosaic, truth)
    two, _ = mosaic_confusion(mosaic, truth, workers=2)
    np.testing.assert_array_equal(one, expected)
    np.testing.assert_array_equal(two, expected)
    assert names == ("background", "water", "building")


def test_a_killed_evaluation_resumes_at_the_bands_it_had_not_counted(scored, tmp_path, monkeypatch):
    import geoseg.stages.evaluate as stage

    mosaic, truth, expected = scored
    parts = tmp_path / ".evaluate-parts"
    counted = []

    def killed_after_two(*arguments):
        if len(counted) == 2:
            raise KeyboardInterrupt
        counted.append(arguments[2:])
        return band_confusion(*arguments)

    monkeypatch.setattr(stage, "band_confusion", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        stage.mosaic_confusion(mosaic, truth, parts_dir=parts)
    assert len(list(parts.glob("*.npz"))) == 2
    first_two = list(counted)

    counted.clear()
    monkeypatch.setattr(stage, "band_confusion", lambda *a: counted.append(a[2:]) or band_confusion(*a))
    matrix, _ = stage.mosaic_confusion(mosaic, truth, parts_dir=parts)
    np.testing.assert_array_equal(matrix, expected)
    assert not set(counted) & set(first_two) and len(counted) == len(chunk_row_bands(SIZE, CHUNK, 8)) - 2
    assert not parts.exists()  # removed once the matrix is whole


def test_counts_kept_for_another_reference_are_not_reused(scored, tmp_path):
    from geoseg.evaluate.confusion import counts_key, save_counts
    from geoseg.io.mosaic import open_mosaic
    from geoseg.stages.evaluate import mosaic_confusion

    mosaic, truth, expected = scored
    parts = tmp_path / ".evaluate-parts"
    first, stop = chunk_row_bands(SIZE, CHUNK, 8)[0]
    save_counts(parts, counts_key(open_mosaic(mosaic), truth), first, stop, np.full((3, 3), 10**6))
    with rasterio.open(truth) as src:
        labels = src.read(1)
    write_geotiff(truth, labels)  # the same labels, written again: another file
    matrix, _ = mosaic_confusion(mosaic, truth, parts_dir=parts)
    np.testing.assert_array_equal(matrix, expected)


def test_counts_are_keyed_on_the_file_the_reference_was_made_from(scored, tmp_path):
    """Polygon labels are rasterized again by every run: a resume keys on the labels file, not that raster."""
    from geoseg.evaluate.confusion import counts_key, save_counts
    from geoseg.io.mosaic import open_mosaic
    from geoseg.stages.evaluate import mosaic_confusion

    mosaic, truth, expected = scored
    labels = tmp_path / "labels.gpkg"
    labels.write_bytes(b"the polygons the truth raster was made from")
    parts = tmp_path / ".evaluate-parts"
    bands = chunk_row_bands(SIZE, CHUNK, 8)
    for first, stop in bands[1:]:  # a killed run counted every band but the first
        save_counts(parts, counts_key(open_mosaic(mosaic), labels), first, stop, np.zeros((3, 3), np.int64))
    with rasterio.open(truth) as src:
        raster = src.read(1)
    write_geotiff(truth, raster)  # rasterized again by the rerun
    matrix, _ = mosaic_confusion(mosaic, truth, parts_dir=parts, reference=labels)
    first_band = band_confusion(mosaic, truth, *bands[0])
    np.testing.assert_array_equal(matrix, first_band)  # the kept (zero) counts were reused
    assert not np.array_equal(first_band, expected)
