"""Box tables for instance models: each box one object, with that box and a mask filling it."""

import numpy as np
import rasterio
from numpy.testing import assert_array_equal

from geoseg.io.labels import load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from geoseg.train.instances import crop_targets
from tests.factories import write_geotiff

H, W = 64, 80
BOXES = [(5, 4, 30, 20), (20, 10, 41, 33), (60, 40, 95, 64)]  # pixel edges; the second overlaps the first


def test_boxes_become_mask_rcnn_targets_box_and_filled_mask(tmp_path):
    scene = inspect_scene(write_geotiff(tmp_path / "scene.tif", np.full((3, H, W), 9, np.uint8)))
    csv = tmp_path / "trees.csv"
    csv.write_text("xmin,ymin,xmax,ymax,label\n" + "".join(f"{x0},{y0},{x1},{y1},tree\n" for x0, y0, x1, y1 in BOXES))
    labels = load_labels(csv, scene=scene, classes=["background", "tree"], field="class", box_coords="pixel")
    with rasterio.open(rasterize_labels(labels, scene, tmp_path / "ids.tif", instances=True)) as src:
        ids = src.read(1)
    targets = crop_targets(ids, np.array([0, *labels.class_id.astype(int)]))
    # boxes as given, clipped to the image (the third reaches past the right edge)
    assert targets["boxes"].tolist() == [[5, 4, 30, 20], [20, 10, 41, 33], [60, 40, 80, 64]]
    assert targets["labels"].tolist() == [1, 1, 1]
    expected = np.zeros((3, H, W), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(BOXES):
        expected[:k, y0:y1, x0:x1] = 0  # a later box covers the earlier ones where they overlap
        expected[k, y0:y1, x0:x1] = 1
    assert_array_equal(targets["masks"].numpy(), expected)
