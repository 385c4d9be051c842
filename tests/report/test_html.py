"""report.html from a run's outputs: the numbers of metrics.json, nothing to fetch, overlays at their true bounds."""

from __future__ import annotations

import base64
import io
import json
import re

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image
from pyproj import Transformer
from rasterio.transform import array_bounds, rowcol

from geoseg.config.paths import JobPaths
from geoseg.evaluate.quicklook import class_colours
from geoseg.io.mosaic import open_mosaic
from geoseg.job import load_job
from geoseg.report import REPORT, ImpactRow, ImpactTable, ReportExtras, write_report
from geoseg.report.content import VectorLayer
from geoseg.report.html import STATIC
from geoseg.report.mapview import MapContent, map_json
from tests.factories import tiny_job, tiny_scene

RUN_ID = "20990101T000000Z-beef"


def map_data(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="geoseg-map-data">(.*?)</script>', html, re.DOTALL)
    assert found, "the page carries its map as JSON"
    return json.loads(found.group(1))


def test_the_report_sits_beside_metrics_json_with_the_job_and_run(report_run):
    html = report_run.report.read_text()
    assert report_run.report == report_run.paths.metrics.with_name(REPORT) == report_run.paths.root / "report.html"
    assert '<dd id="run-job">tiny</dd>' in html and f'<dd id="run-run">{report_run.run_id}</dd>' in html
    assert not report_run.report.with_name(REPORT + ".partial").exists()


def test_every_number_on_the_page_is_the_one_in_metrics_json(report_run, page_cells, json_at, number_text):
    metrics = json.loads(report_run.paths.metrics.read_text())
    cells = page_cells(report_run.report.read_text())
    keyed = [c for c in cells if c.key is not None]
    for cell in keyed:
        assert cell.file == "metrics.json"
        assert cell.value == json_at(metrics, cell.key), cell
        assert cell.text == number_text(cell.value), cell
    keys = {c.key for c in keyed}
    names = metrics["model"]["class_names"]
    for block in ("model", "colour_baseline"):  # both blocks, every score of each
        for score in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou", "pixels"):
            assert f"/{block}/{score}" in keys
        for per_class in ("per_class_iou", "per_class_f1", "per_class_accuracy"):
            assert {f"/{block}/{per_class}/{name}" for name in names} <= keys
    assert {f"/model/confusion_matrix/{i}/{j}" for i in range(3) for j in range(3)} <= keys
    assert {f"/training/epochs/{i}/{k}" for i in range(3) for k in ("loss", "val_miou")} <= keys
    assert metrics["training"] == report_run.history  # evaluate copied it: the curves are metrics.json's


def test_precision_is_derived_from_the_confusion_matrix_columns(report_run, page_cells, number_text):
    metrics = json.loads(report_run.paths.metrics.read_text())
    derived = {c.derived: c for c in page_cells(report_run.report.read_text()) if c.derived}
    for block in ("model", "colour_baseline"):
        matrix = np.array(metrics[block]["confusion_matrix"])
        for j, name in enumerate(metrics[block]["class_names"]):
            cell = derived[f"/{block}/precision/{name}"]
            assert cell.value == pytest.approx(matrix[j, j] / matrix[:, j].sum(), abs=1e-15)
            assert cell.text == number_text(cell.value)


def test_nothing_on_the_page_points_off_it(report_run):
    html = report_run.report.read_text()
    leaflet = (STATIC / "leaflet.js").read_text()
    # Leaflet's own code names the SVG namespace and its site (the attribution link, which report.js replaces):
    # identifiers, never fetched. Everything else the page holds has no URL at all.
    assert set(re.findall(r"https?://[\w./-]+", leaflet)) == {"http://www.w3.org/2000/svg", "https://leafletjs.com"}
    assert leaflet in html
    rest = html.replace(leaflet, "")
    assert re.findall(r"(?:https?|ftp)://", rest) == []
    assert "<link" not in rest and "@import" not in rest
    # data: URIs, or a same-document fragment (Leaflet's IE-only ``behavior: url(#default#VML)``): nothing to load
    assert all(u.startswith(("data:", "#")) for u in re.findall(r"url\(([^)]*)\)", rest))
    assert all(s.startswith("data:") for s in re.findall(r'\ssrc="([^"]*)"', rest))
    assert "default-src 'none'" in html  # and the browser is told to load nothing from anywhere


def test_the_images_lie_at_the_scene_bounds_in_degrees(report_run):
    """Independently of the report: pyproj's densified transform of the scene's bounds to EPSG:4326."""
    mosaic = open_mosaic(report_run.paths.mosaic)
    west, south, east, north = array_bounds(mosaic.height, mosaic.width, mosaic.transform)
    to_degrees = Transformer.from_crs(mosaic.crs, "EPSG:4326", always_xy=True)
    lon_w, lat_s, lon_e, lat_n = to_degrees.transform_bounds(west, south, east, north, densify_pts=21)
    data = map_data(report_run.report.read_text())
    assert [o["id"] for o in data["overlays"]] == ["scene", "prediction"]
    for overlay in data["overlays"]:
        (s, w), (n, e) = overlay["bounds"]
        assert (s, w, n, e) == pytest.approx((lat_s, lon_w, lat_n, lon_e), abs=1e-9)
    assert data["bounds"] == data["overlays"][0]["bounds"]
    assert 45.15 < lat_s < lat_n < 45.16 and 14.9999 < lon_w < lon_e < 15.002  # UTM 33N, 500 km east: near 15°E


def test_each_prediction_pixel_shows_the_class_of_the_mosaic_under_it(report_run):
    """The warp is right: a pixel of the image, at its place on the map, shows the class the mosaic has there."""
    mosaic = open_mosaic(report_run.paths.mosaic)
    labels = np.asarray(mosaic.labels[:])
    overlay = map_data(report_run.report.read_text())["overlays"][1]
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(overlay["url"].split(",", 1)[1]))).convert("RGBA"))
    (s, w), (n, e) = overlay["bounds"]
    to_mercator = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (left, right), (bottom, top) = to_mercator.transform([w, e], [s, n])
    to_scene = Transformer.from_crs("EPSG:3857", mosaic.crs, always_xy=True)
    colours = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in class_colours(mosaic.class_names)]
    height, width = image.shape[:2]
    checked = 0
    for i in range(0, height, 7):
        for j in range(0, width, 7):
            x = left + (j + 0.5) * (right - left) / width
            y = top - (i + 0.5) * (top - bottom) / height
            row, col = rowcol(mosaic.transform, *to_scene.transform(x, y))
            around = labels[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
            if not (0 <= row < mosaic.height and 0 <= col < mosaic.width) or len(np.unique(around)) > 1:
                continue  # at a class border the nearest pixel may be either
            cls = int(labels[row, col])
            if cls == 0:
                assert image[i, j, 3] == 0  # background is clear: the scene shows through
            else:
                assert tuple(image[i, j, :3]) == colours[cls] and image[i, j, 3] > 0
            checked += 1
    assert checked > 400


def test_the_map_has_every_polygon_with_its_pop_up_fields(report_run):
    frame = gpd.read_file(report_run.paths.vectors / "polygons.geojson")
    layer = map_data(report_run.report.read_text())["vectors"][0]
    assert layer["id"] == "polygons" and layer["popup"] == ["row", "class", "class_id", "area_m2"]
    features = layer["features"]["features"]
    assert len(features) == len(frame) > 5
    assert sorted(f["properties"]["area_m2"] for f in features) == sorted(frame["area_m2"])
    areas = [f["properties"]["area_m2"] for f in features]
    assert areas == sorted(areas, reverse=True)  # largest drawn first, so the small ones stay clickable on top
    assert {f["properties"]["class"] for f in features} == set(frame["class"])
    assert all(frame.iloc[f["properties"]["row"]]["area_m2"] == f["properties"]["area_m2"] for f in features)


def test_a_large_set_is_cut_to_the_largest_and_the_page_says_how_many_are_left_out(report_run, tmp_path):
    total = len(gpd.read_file(report_run.paths.vectors / "polygons.geojson"))
    html = write_report(report_run.copy(tmp_path), RUN_ID, max_features=3).read_text()
    layer = map_data(html)["vectors"][0]
    frame = gpd.read_file(report_run.paths.vectors / "polygons.geojson")
    largest = sorted(frame["area_m2"], reverse=True)[:3]
    assert [f["properties"]["area_m2"] for f in layer["features"]["features"]] == largest
    assert layer["name"] == f"polygons (3 of {total})"
    assert f"the 3 largest of {total} features of polygons.geojson" in html
    assert f"{total - 3} smaller ones are left out" in html


def test_the_training_curves_are_drawn_from_the_history(report_run):
    html = report_run.report.read_text()
    svg = re.search(r'<svg class="curves".*?</svg>', html, re.DOTALL).group(0)
    lines = re.findall(r'<polyline points="([^"]+)"', svg)
    assert [len(points.split()) for points in lines] == [3, 3]  # loss and validation mIoU, one point per epoch
    assert "validation mIoU" in svg and ">best<" in svg


def test_a_run_without_outputs_gets_a_page_that_says_so(tmp_path):
    scene, labels = tiny_scene(tmp_path)
    job = load_job(tiny_job(tmp_path, scene, labels))
    html = write_report(job, RUN_ID).read_text()
    assert "No metrics.json in the output folder" in html and "Nothing to map" in html
    assert map_data(html)["bounds"] is None and 'id="map"' not in html
    assert 'id="training"' not in html and not JobPaths.of(job).metrics.exists()


def test_a_later_stage_adds_its_impact_table_and_layers(report_run, tmp_path):
    impact = ImpactTable(
        columns=("flooded area (m²)", "buildings affected"),
        rows=(ImpactRow("north <ward>", (1234.5, 17)), ImpactRow("south", (0.0, 0))),
    )
    buildings = VectorLayer(
        id="buildings",
        name="affected buildings",
        features={"type": "FeatureCollection", "features": []},
        popup=("id",),
        total=0,
    )
    extras = ReportExtras(impact=impact, vectors=(buildings,))
    html = write_report(report_run.copy(tmp_path), RUN_ID, extras=extras).read_text()
    section = re.search(r'<section id="impact">.*?</section>', html, re.DOTALL).group(0)
    assert "north &lt;ward&gt;" in section and ">1234.5000<" in section and ">17<" in section
    assert [v["id"] for v in map_data(html)["vectors"]] == ["polygons", "buildings"]


def test_the_map_json_cannot_end_its_script_element():
    evil = VectorLayer(
        id="x",
        name="</script><script>alert(1)</script>",
        features={"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"id": "a&b"}}]},
        popup=("id",),
        total=1,
    )
    text = map_json(MapContent(None, (), (evil,), (), ()))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["vectors"][0]["name"] == evil.name
