"""The map's images are warped into place: far from a UTM zone's central meridian, and from overview levels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from affine import Affine
from PIL import Image
from pyproj import CRS, Transformer
from rasterio.transform import array_bounds

from geoseg.evaluate.quicklook import class_colours
from geoseg.io.mosaic import create_mosaic, mark_done, open_mosaic, write_block
from geoseg.io.overviews import build_overviews, list_overviews
from geoseg.report.overlays import mercator_grid, prediction_overlay, scene_overlay

SIZE, BLOCK, CHUNK = 192, 16, 64
CLASSES = ["background", "water", "building"]
# 100 m pixels 300 km west of zone 33's central meridian at 60°N: the grid is turned ~4.7° from north,
# which moves the far corner of this 19 km scene by some 1.5 km (15 pixels) from where pinning it would put it.
FAR = Affine(100.0, 0, 200_000.0, 0, -100.0, 6_700_000.0)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    """A mosaic of 16-pixel class blocks on the turned grid, with overview levels 2, 4 and 8."""
    path = tmp_path_factory.mktemp("far") / "mosaic.zarr"
    rows, cols = np.indices((SIZE, SIZE)) // BLOCK
    labels = ((rows + 2 * cols) % 3).astype(np.uint8)
    mosaic = create_mosaic(
        path, height=SIZE, width=SIZE, chunk=CHUNK, crs=CRS.from_epsg(32633), transform=FAR, class_names=CLASSES
    )
    for row in range(0, SIZE, CHUNK):
        for col in range(0, SIZE, CHUNK):
            block = labels[row : row + CHUNK, col : col + CHUNK]
            write_block(mosaic, row, col, block, np.ones_like(block))
            mark_done(mosaic, row, col)
    build_overviews(path, min_side=32)
    assert list_overviews(path) == [2, 4, 8]
    return open_mosaic(path), labels


def _rowcol(transform, x: float, y: float) -> tuple[int, int]:
    col, row = ~transform @ (x, y)
    return int(np.floor(row)), int(np.floor(col))


def _misplaced(mosaic, labels, max_side: int, margin: int) -> tuple[int, int]:
    """(pixels checked, pixels whose colour is not the class of the mosaic where the pixel lies)."""
    grid = mercator_grid(mosaic, max_side)
    image = np.asarray(Image.open(io.BytesIO(prediction_overlay(mosaic, grid, max_side).png)).convert("RGBA"))
    to_scene = Transformer.from_crs("EPSG:3857", mosaic.crs, always_xy=True)
    colours = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in class_colours(CLASSES)]
    checked = wrong = 0
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            x, y = grid.transform @ (j + 0.5, i + 0.5)
            row, col = _rowcol(mosaic.transform, *to_scene.transform(x, y))
            near = labels[max(row - margin, 0) : row + margin + 1, max(col - margin, 0) : col + margin + 1]
            if not (margin <= row < SIZE - margin and margin <= col < SIZE - margin) or len(np.unique(near)) > 1:
                continue  # near a block's edge the sample may be either side
            cls = int(labels[row, col])
            shown = image[i, j, 3] == 0 if cls == 0 else (tuple(image[i, j, :3]) == colours[cls] and image[i, j, 3])
            checked += 1
            wrong += not shown
    return checked, wrong


def test_the_grid_corners_are_the_scene_bounds_in_degrees_and_the_scene_is_turned_in_it(blocks):
    mosaic, _ = blocks
    grid = mercator_grid(mosaic)
    west, south, east, north = array_bounds(SIZE, SIZE, FAR)
    lon_w, lat_s, lon_e, lat_n = Transformer.from_crs(mosaic.crs, "EPSG:4326", always_xy=True).transform_bounds(
        west, south, east, north, densify_pts=21
    )
    b = grid.bounds
    assert (b.south, b.west, b.north, b.east) == pytest.approx((lat_s, lon_w, lat_n, lon_e), abs=1e-9)
    # The scene's north-west corner is well inside the grid, not at its corner: pinning corners would be wrong.
    corner = Transformer.from_crs(mosaic.crs, "EPSG:3857", always_xy=True).transform(west, north)
    col, row = ~grid.transform @ corner
    assert max(abs(col), abs(row)) > 5


@pytest.mark.parametrize(("max_side", "margin"), [(1024, 1), (30, 5)], ids=["base", "overview-4-by-2"])
def test_each_pixel_shows_the_class_under_it(blocks, max_side, margin):
    """Full resolution, and a ~28-px image read from the factor-4 overview every 2nd pixel (8 px a sample).

    A sample stands for the 8-px block it starts: within half a block and a pixel of a class edge it may be
    either class; everywhere else it must be right.
    """
    mosaic, labels = blocks
    checked, wrong = _misplaced(mosaic, labels, max_side, margin)
    assert checked > (50 if max_side < SIZE else 10_000) and wrong == 0


def test_a_mosaic_that_does_not_name_its_scene_has_no_scene_image(blocks):
    mosaic, _ = blocks
    why = scene_overlay(mosaic, mercator_grid(mosaic))
    assert why == "the mosaic does not record its scene (made by an older geoseg)"
