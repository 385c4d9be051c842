"""Per-scene label options in the job file: label_field, label_map, label_class and train.buffer_m."""

from pathlib import Path

import pytest
import yaml

from geoseg.config.load import read_job_file
from geoseg.errors import JobConfigError


def job_file(tmp_path, scene_options: dict, **train) -> Path:
    data = {
        "name": "t",
        "output_dir": "out",
        "classes": ["background", "building", "road"],
        "stages": ["train"],
        "train": {"scenes": [{"image": "a.tif", "labels": "a.geojson", **scene_options}], **train},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False).replace("'yes'", "yes"))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(JobConfigError) as info:
        read_job_file(path)
    return info.value.problems


def test_label_map_keys_are_text_whatever_yaml_made_of_them(tmp_path):
    path = job_file(tmp_path, {"label_map": {"yes": "building", 2: "road", 3.0: "road"}}, buffer_m={"road": 3.5})
    assert "yes: building" in path.read_text()  # unquoted: YAML reads it as true
    job = read_job_file(path)
    assert job.train.scenes[0].label_map == {"true": "building", "2": "road", "3": "road"}
    assert job.train.scenes[0].label_field is None and job.train.label_field == "class"
    assert job.train.buffer_m == {"road": 3.5}


def test_label_classes_must_be_known_naming_the_field_and_the_value(tmp_path):
    path = job_file(tmp_path, {"label_map": {"house": "buildings"}}, buffer_m={"roads": 3.0})
    known = "(background, building, road)"
    assert problems(path) == [
        f"{path}: (top level): train.scenes[0].label_map: 'house' maps to 'buildings', which is not in classes: "
        f"{known}; train.buffer_m: 'roads' is not in classes: {known}"
    ]
    path = job_file(tmp_path, {"label_class": "field"})
    assert problems(path) == [f"{path}: (top level): train.scenes[0].label_class: 'field' is not in classes: {known}"]


def test_label_class_excludes_label_map_and_widths_must_be_positive(tmp_path):
    path = job_file(tmp_path, {"label_class": "building", "label_field": "kind"}, buffer_m={"road": -1})
    lines = problems(path)
    assert f"{path}: train.buffer_m.road: must be > 0 (got -1)" in lines
    assert any(
        line.startswith(f"{path}: train.scenes.0: label_class gives every feature one class; remove label_field")
        for line in lines
    )


def test_class_names_of_each_source_are_checked_naming_the_source():
    from geoseg.config.label_values import unknown_label_classes

    namings = [("train.scenes[0].labels[1]", {"yes": "buildings"}, None), ("train.scenes[1]", {}, "fields")]
    assert unknown_label_classes(namings, [], ["background", "building"], []) == [
        "train.scenes[0].labels[1].label_map: 'yes' maps to 'buildings', which is not in classes: "
        "(background, building)",
        "train.scenes[1].label_class: 'fields' is not in classes: (background, building)",
    ]
