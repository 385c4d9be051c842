"""``geoseg bench pipeline`` and its block-by-block survey generator."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import shapes

from geoseg.bench.pipeline import TRANSFORM, PipelineSettings, bench_pipeline, write_pipeline_scene
from geoseg.cli import main
from geoseg.io.mosaic import DONE, open_mosaic
from geoseg.synthetic.layout import DEMO_CLASSES
from geoseg.synthetic.survey_blocks import DISTRICT, RIVER_LANE, BlockWindow, reference_block, survey_block
from geoseg.vectorize.classes import vectorize_mosaic


def _assembled(make, row: int, col: int, size: int, step: int, seed: int) -> np.ndarray:
    """The ``size``² region at (row, col) made from independent blocks of ``step`` px (ragged at the edges)."""
    out = np.full((size, size), 255, np.uint8)
    for r in range(0, size, step):
        for c in range(0, size, step):
            h, w = min(step, size - r), min(step, size - c)
            out[r : r + h, c : c + w] = make(BlockWindow(row + r, col + c, h, w), seed)
    return out


@pytest.mark.parametrize("make", [survey_block, reference_block])
@pytest.mark.parametrize(
    "row, col",
    [(0, 0), (RIVER_LANE - 150, DISTRICT - 170)],  # the second straddles a river lane and a district edge
)
def test_any_block_equals_the_same_region_of_the_whole_map(make, row, col):
    size, seed = 320, 3
    whole = make(BlockWindow(row, col, size, size), seed)
    assert np.array_equal(_assembled(make, row, col, size, 77, seed), whole)
    assert len(np.unique(whole)) >= 3  # not a trivially constant map
    assert not np.array_equal(make(BlockWindow(row, col, size, size), seed + 1), whole)


def test_reference_differs_from_the_map_in_about_two_percent_of_pixels():
    window = BlockWindow(1000, 2000, 400, 400)
    share = float((reference_block(window, 0) != survey_block(window, 0)).mean())
    assert 0.015 < share < 0.025


def test_cli_prints_one_json_line_with_every_step(capsys):
    assert main(["bench", "pipeline", "--size", "512", "--chunk", "128", "--simplify-m", "1.0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert (result["size"], result["workers"], result["chunk"], result["simplify_m"]) == (512, 1, 128, 1.0)
    for step in ("vectorize", "vectorize_instances", "evaluate", "overviews"):
        fields = result[step]
        assert fields["seconds"] > 0 and fields["mpix_per_s"] > 0
        assert fields["peak_mb"] >= fields["peak_by_process_mb"]["driver"] > 0
        assert 0 <= fields["other_cpu_share"] <= 1
    assert result["vectorize"]["features"] == result["vectorize_instances"]["features"] > 0
    assert result["vectorize"]["features_per_s"] > 0
    assert result["evaluate"]["features"] is None
    assert 0.97 < result["pixel_agreement"] < 0.99  # the 2% flipped pixels of the reference
    assert result["peak_mb"] == max(
        result[step]["peak_mb"] for step in ("vectorize", "evaluate", "overviews", "vectorize_instances")
    )


def test_cli_names_every_bad_flag(capsys):
    assert main(["bench", "pipeline", "--size", "8", "--workers", "0", "--simplify-m", "-1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "geoseg: error: geoseg bench pipeline: --size: 8 is below 16; give 16 or more",
        "geoseg: error: geoseg bench pipeline: --workers: 0 is below 1; give 1 or more",
        "geoseg: error: geoseg bench pipeline: --simplify-m: -1.0 is below 0; give 0 or more",
    ]


def test_written_mosaic_vectorizes_like_the_whole_label_array(tmp_path):
    """Polygons of the chunked mosaic (seams merged) = polygons of the whole map traced in one piece by GDAL."""
    size, chunk, seed = 600, 128, 5
    scene = write_pipeline_scene(tmp_path, size=size, chunk=chunk, seed=seed)
    mosaic = open_mosaic(scene.mosaic)
    labels = survey_block(BlockWindow(0, 0, size, size), seed)
    assert np.array_equal(np.asarray(mosaic.labels[:]), labels)
    assert (np.asarray(mosaic.array("done")[:]) == DONE).all()
    with rasterio.open(scene.reference) as reference:
        assert np.array_equal(reference.read(1), reference_block(BlockWindow(0, 0, size, size), seed))

    outputs = vectorize_mosaic(scene.mosaic, tmp_path / "vectors")
    ours = gpd.read_file(outputs.vectors)
    expected = [
        (DEMO_CLASSES[int(value)], shapely.geometry.shape(geom))
        for geom, value in shapes(labels, connectivity=4, transform=TRANSFORM)
        if value != 0
    ]
    assert len(expected) > 20

    def key(name: str, geom) -> tuple:
        return (name, round(geom.area, 4), *(round(v, 4) for v in geom.bounds))

    assert sorted(key(name, geom) for name, geom in zip(ours["class"], ours.geometry, strict=True)) == sorted(
        key(name, geom) for name, geom in expected
    )


@pytest.mark.slow
def test_two_workers_run_the_steps_as_ray_tasks_with_the_same_results(ray_local):
    one = bench_pipeline(PipelineSettings(size=512, chunk=128, workers=1), log=lambda _: None)
    two = bench_pipeline(PipelineSettings(size=512, chunk=128, workers=2), log=lambda _: None)
    assert two["workers"] == 2
    # Ray's task workers were measured (a task too short for the sampler shows as ray::IDLE).
    assert any(name.startswith("ray::") for name in two["vectorize"]["peak_by_process_mb"])
    assert two["vectorize_instances"]["features"] == one["vectorize_instances"]["features"]
    assert two["pixel_agreement"] == one["pixel_agreement"]
    assert two["vectorize"]["features"] == one["vectorize"]["features"]


def test_a_scene_written_before_is_reused_only_when_it_matches(tmp_path):
    from geoseg.bench.pipeline import existing_scene

    scene = write_pipeline_scene(tmp_path, size=256, chunk=64, seed=2)
    assert existing_scene(tmp_path, size=256, chunk=64, seed=2) == scene
    assert existing_scene(tmp_path, size=256, chunk=64, seed=3) is None  # another map
    assert existing_scene(tmp_path, size=256, chunk=128, seed=2) is None
    lines: list[str] = []
    result = bench_pipeline(PipelineSettings(size=256, chunk=64, seed=2, out=tmp_path), log=lines.append)
    assert lines == [f"bench pipeline: reusing the 256² mosaic and reference under {tmp_path}"]
    assert result["vectorize"]["features"] > 0
    scene.reference.unlink()  # incomplete: written again
    assert existing_scene(tmp_path, size=256, chunk=64, seed=2) is None
