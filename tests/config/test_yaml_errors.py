"""A job file that is not YAML: the file, line and column, the problem, then the line and a caret."""

import pytest

from geoseg.config.load import read_job_file
from geoseg.errors import JobConfigError

FIX = "fix the line shown (indent with spaces, not tabs; quote a value that holds ': ' or ' #')"


def problems(tmp_path, text: str | bytes) -> list[str]:
    path = tmp_path / "job.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(JobConfigError) as error:
        read_job_file(path)
    assert "<unicode string>" not in str(error.value)
    return error.value.problems


def test_a_colon_in_a_value_names_its_line_and_column(tmp_path):
    text = "name: survey\nclasses: [background, water]\ntiling:\n  tile_size: 512\n  halo: auto: 64\n"
    assert problems(tmp_path, text) == [
        f"{tmp_path}/job.yaml:5:13: not valid YAML: mapping values are not allowed here; {FIX}\n"
        "      halo: auto: 64\n"
        "                ^"
    ]


def test_an_unclosed_list_names_where_it_opened(tmp_path):
    assert problems(tmp_path, "classes: [background, water\nname: x\n") == [
        f"{tmp_path}/job.yaml:2:5: not valid YAML: expected ',' or ']', but got ':' "
        f"(while parsing a flow sequence started at line 1, column 10); {FIX}\n"
        "    name: x\n"
        "        ^"
    ]


def test_a_tab_keeps_the_caret_under_the_column(tmp_path):
    assert problems(tmp_path, "tiling:\n  tile_size: 512\n\thalo: 8\n") == [
        f"{tmp_path}/job.yaml:3:1: not valid YAML: found character '\\t' that cannot start any token; {FIX}\n"
        "    \thalo: 8\n"
        "    ^"
    ]


def test_a_control_character_is_located_and_not_echoed(tmp_path):
    assert problems(tmp_path, "name: a\nclasses: [x\x07]\n") == [
        f"{tmp_path}/job.yaml:2:12: not valid YAML: unacceptable character #x0007: special characters are not "
        f"allowed; {FIX}\n"
        "    classes: [x?]\n"
        "               ^"
    ]


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path):
    assert problems(tmp_path, b"name: a\nclasses: [caf\xe9]\n") == [
        f"{tmp_path}/job.yaml:2:14: not UTF-8 text (byte 21: invalid continuation byte); save the file as UTF-8"
    ]
