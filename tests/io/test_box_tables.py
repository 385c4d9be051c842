"""Box tables (xmin, ymin, xmax, ymax, label) in pixel or map coordinates as training labels; bad rows all at once."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from numpy.testing import assert_array_equal

from geoseg.cli import main
from geoseg.errors import InputVectorError
from geoseg.io.labels import IGNORE, load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from tests.factories import ORIGIN, REAL_DATA, real_raster, tiny_job, write_geotiff

CLASSES = ["background", "tree", "bush"]
H, W = 64, 80
# (x0, y0, x1, y1) in pixel edges, class; the second overlaps the first, the last reaches past the right edge
BOXES = [((5, 4, 30, 20), "Tree"), ((20, 10, 41, 33), "Bush"), ((60, 40, 95, 64), "Tree")]
IDS = {"Tree": 1, "Bush": 2}


@pytest.fixture
def scene(tmp_path):
    return inspect_scene(write_geotiff(tmp_path / "scene.tif", np.full((3, H, W), 9, np.uint8)))


def table(path: Path, rows, header="xmin,ymin,xmax,ymax,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def painted(boxes, shape=(H, W), ids=IDS) -> np.ndarray:
    """The expected target, computed independently: numpy slices painted in the table's order."""
    expected = np.zeros(shape, np.uint8)
    for (x0, y0, x1, y1), name in boxes:
        expected[y0:y1, x0:x1] = ids[name]
    return expected


def target(labels, scene, tmp_path, **options) -> np.ndarray:
    with rasterio.open(rasterize_labels(labels, scene, tmp_path / "target.tif", block=32, **options)) as src:
        return src.read(1)


def load(path, scene, box_coords):
    label_map = {"Tree": "tree", "Bush": "bush"}
    return load_labels(path, scene=scene, classes=CLASSES, field="class", box_coords=box_coords, label_map=label_map)


def test_pixel_boxes_paint_numpy_slices_of_the_image(scene, tmp_path):
    boxes = table(tmp_path / "boxes.csv", [(*b, name) for b, name in BOXES])
    labels = load(boxes, scene, "pixel")
    assert labels.class_id.tolist() == [1, 2, 1]
    assert_array_equal(target(labels, scene, tmp_path), painted(BOXES))


def test_map_boxes_paint_the_same_pixels(scene, tmp_path):
    def to_map(x0, y0, x1, y1):  # ymin is the south edge in map coordinates
        return ORIGIN.c + x0 * 0.5, ORIGIN.f - y1 * 0.5, ORIGIN.c + x1 * 0.5, ORIGIN.f - y0 * 0.5

    boxes = table(tmp_path / "boxes.csv", [(*to_map(*b), name) for b, name in BOXES])
    assert_array_equal(target(load(boxes, scene, "map"), scene, tmp_path), painted(BOXES))


def test_each_box_is_one_instance_id_the_later_one_on_top(scene, tmp_path):
    boxes = table(tmp_path / "boxes.csv", [(*b, name) for b, name in BOXES])
    ids = target(load(boxes, scene, "pixel"), scene, tmp_path, instances=True)
    expected = np.zeros((H, W), np.uint32)
    for k, ((x0, y0, x1, y1), _) in enumerate(BOXES, start=1):
        expected[y0:y1, x0:x1] = k
    assert_array_equal(ids, expected)


def test_the_real_neon_tree_boxes_over_their_tile(tmp_path):
    trees = REAL_DATA / "neon_osbs_029_trees.csv"
    scene = inspect_scene(real_raster("neon_osbs_029.tif"))
    if not trees.exists():
        pytest.skip(f"real test data not present: {trees}")
    # DeepForest's columns: image_path, xmin, ymin, xmax, ymax, label; `label` is a box table's class column
    with pytest.raises(InputVectorError, match=r"class names \['Tree'\] are not in the job's classes"):
        load_labels(trees, scene=scene, classes=["background", "tree"], field="class", box_coords="pixel")
    labels = load_labels(
        trees,
        scene=scene,
        classes=["background", "tree"],
        field="class",
        box_coords="pixel",
        label_map={"Tree": "tree"},
    )
    rows = [line.split(",") for line in trees.read_text().splitlines()[1:]]
    assert len(labels) == len(rows) == 61
    boxes = [(tuple(int(v) for v in row[1:5]), "tree") for row in rows]
    expected = painted(boxes, shape=(scene.height, scene.width), ids={"tree": 1})
    with rasterio.open(scene.path) as src:
        expected[src.dataset_mask() == 0] = IGNORE  # the tile's own nodata pixels are never labelled
    got = target(labels, scene, tmp_path)
    assert_array_equal(got, expected)
    assert 0.3 < (got == 1).mean() < 0.9  # crowns cover much of the tile, not all of it


def test_validate_reports_every_bad_row_and_table_at_once(tmp_path, capsys):
    scene = write_geotiff(tmp_path / "scene.tif", np.full((3, H, W), 9, np.uint8))
    good = [(5, 4, 30, 20, "Tree")]
    bad = table(
        tmp_path / "bad.csv",
        [
            *good,
            (5, "4a", 30, 20, "Tree"),  # line 3: not a number
            (5, 4, 30, "", "Tree"),  # line 4: empty
            (30, 4, 5, 20, "Tree"),  # line 5: xmax <= xmin
            (5, 20, 30, 20, "Tree"),  # line 6: ymax <= ymin
            (500, 20, 530, 60, "Tree"),  # line 7: outside the 80 x 64 image
            (80, 0, 90, 10, "Tree"),  # line 8: touches the right edge only: outside
            (0, 0, 10, 10, "Snag"),  # an unknown class
        ],
    )
    columns = table(tmp_path / "columns.csv", [(5, 4, 30, "Tree")], header="left,top,right,label")
    images = table(
        tmp_path / "images.csv",
        [("a.tif", *good[0]), ("b.tif", *good[0])],
        header="image_path,xmin,ymin,xmax,ymax,label",
    )
    job = tiny_job(tmp_path, scene, bad)
    data = yaml.safe_load(job.read_text())
    data.update(stages=["train"], classes=CLASSES)
    data["train"]["scenes"][0]["labels"] = [
        {"path": str(path), "box_coords": "pixel", "label_map": {"Tree": "tree"}} for path in (bad, columns, images)
    ]
    job.write_text(yaml.safe_dump(data))
    assert main(["validate", str(job)]) == 2
    where = [f"geoseg: error: {path}: train.scenes[0].labels[{i}]" for i, path in enumerate((bad, columns, images))]
    assert capsys.readouterr().err.splitlines() == [
        f"{where[0]}: 2 row(s) with a coordinate that is not a number (first: line 3, ymin '4a'); write plain "
        "numbers (e.g. 12.5) or remove the rows",
        f"{where[0]}: 2 box(es) with xmax <= xmin or ymax <= ymin (first: line 5: 30, 4, 5, 20); give each box its "
        "low edges in xmin, ymin and its high edges in xmax, ymax",
        f"{where[0]}: 2 of 8 box(es) lie wholly outside the image scene.tif (x 0 to 80, y 0 to 64 pixels) (first: "
        "line 7: 500, 20, 530, 60); check box_coords (pixel or map) and that the table belongs to this image",
        f"{where[0]}: class names ['Snag'] are not in the job's classes ['background', 'tree', 'bush']; add them to "
        "`classes:` or `train.ignore_classes:`, map them with label_map, or fix the labels",
        f"{where[1]}: missing column(s) ['xmin', 'ymin', 'xmax', 'ymax'] (has ['left', 'top', 'right', 'label']); a "
        "box table needs columns xmin, ymin, xmax, ymax and a class column (label_field; default label)",
        f"{where[2]}: boxes of 2 images in column image_path (a.tif, b.tif); keep only the rows of scene.tif (one "
        "table per training image)",
    ]
