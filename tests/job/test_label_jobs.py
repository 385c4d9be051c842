"""Label options reach the input checks: a job whose labels need label_class / label_map / buffer_m validates."""

import pytest
import yaml

from geoseg.errors import JobConfigError
from geoseg.job import validate_job
from tests.factories import real_raster


def _job(tmp_path, scene: dict, classes: list[str], **train) -> str:
    job = {
        "name": "labels",
        "output_dir": str(tmp_path / "out"),
        "classes": classes,
        "stages": ["train"],
        "model": {"arch": "unet", "encoder": "resnet18"},
        "train": {"scenes": [scene], **train},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_a_layer_without_a_class_column_validates_with_label_class(tmp_path):
    scene = {
        "image": str(real_raster("nebraska_landsat5_int16.tif")),
        "labels": str(real_raster("nebraska_fields.geojson")),
        "label_class": "field",
    }
    job, stages = validate_job(_job(tmp_path, scene, ["background", "field"]))
    assert stages == ["train"] and job.train.scenes[0].label_class == "field"


def test_road_lines_validate_with_a_map_and_a_width_and_are_refused_without(tmp_path):
    scene = {
        "image": str(real_raster("spacenet_vegas_roads_pan.tif")),
        "labels": str(real_raster("spacenet_vegas_road_lines.geojson")),
        "label_field": "road_type",
        "label_map": {"5": "road"},
    }
    validate_job(_job(tmp_path, scene, ["background", "road"], buffer_m={"road": 3.0}))
    with pytest.raises(JobConfigError, match=r"have no area; give them a width with train\.buffer_m"):
        validate_job(_job(tmp_path, scene, ["background", "road"]))
