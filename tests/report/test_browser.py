"""report.html in a real browser (Debian's Chromium, headless, no network): the map builds, the numbers hold.

Chromium resolves no host name here (``--host-resolver-rules``), and the page's own policy lets nothing
load; any attempt is listed on ``<html data-blocked>``, which a page with a remote image proves.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoseg.report import write_report
from tests.report.test_impact_view import with_impact

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} absent (apt-get install chromium)"),
]


def chromium(url: str, profile: Path, *args: str) -> str:
    """Load ``url`` offline, give its scripts 5 s of (virtual) time, return stdout."""
    command = [
        str(CHROMIUM),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def overlay_pane(dom: str) -> str:
    found = re.search(
        r'<div class="leaflet-pane leaflet-overlay-pane">(.*?)<div class="leaflet-pane leaflet-shadow', dom
    )
    assert found, "Leaflet made its panes"
    return found.group(1)


def test_the_page_builds_its_map_and_shows_the_numbers_of_metrics_json(
    report_run, tmp_path, page_cells, json_at, number_text
):
    dom = chromium(f"{report_run.report.as_uri()}#feature=polygons/0", tmp_path / "profile", "--dump-dom")
    assert re.match(r'<!DOCTYPE html>\s*<html lang="en">', dom)  # no data-blocked: nothing tried to load
    pane = overlay_pane(dom)
    images = re.findall(r'<img class="leaflet-image-layer[^"]*geoseg-overlay-(\w+)"[^>]*src="data:image/png', pane)
    assert images == ["scene", "prediction"]
    features = json.loads(
        re.search(r'id="geoseg-map-data">(.*?)</script>', dom, re.DOTALL).group(1)  # the page's own map data
    )["vectors"][0]["features"]["features"]
    assert len(re.findall(r'<path class="leaflet-interactive"', pane)) == len(features) > 5
    assert '<div class="geoseg-legend leaflet-control"><b>classes</b>' in dom
    assert [re.sub(r"<[^>]+>", "", e) for e in re.findall(r'class="geoseg-legend-entry">(.*?)</div>', dom)] == [
        "background (clear on the map)",
        "water",
        "vegetation",
    ]
    control = re.search(r'<section class="leaflet-control-layers-list">(.*?)</section>', dom).group(1)
    assert re.findall(r"<span> (.*?)</span>", control) == ["scene (image)", "prediction (classes)", "polygons"]
    popup = re.search(r'<div class="geoseg-popup">(.*?)</div>', dom).group(1)  # opened by the #feature link
    first = features[0]["properties"]
    assert f"<th>class</th><td>{first['class']}</td>" in popup and f"<th>row</th><td>{first['row']}</td>" in popup

    metrics = json.loads(report_run.paths.metrics.read_text())
    cells = [c for c in page_cells(dom) if c.key is not None]
    assert len(cells) > 40
    for cell in cells:
        assert cell.value == json_at(metrics, cell.key) and cell.text == number_text(cell.value), cell


def test_a_screenshot_of_the_page_is_not_blank(report_run, tmp_path):
    shot = tmp_path / "report.png"
    chromium(
        report_run.report.as_uri(),
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,1000",
        "--hide-scrollbars",
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1000, 1280, 3)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    not_white = np.mean(pixels.min(axis=2) < 235)
    # Text and tables alone give a few hundred colours on white; the map's scene (noisy pixels) gives thousands.
    assert colours > 2000 and not_white > 0.25, (colours, not_white)
    map_box = pixels[160:700, 200:1000]  # where the map is drawn, under the header
    assert len(np.unique(map_box.reshape(-1, 3), axis=0)) > 1000


def test_a_page_that_tries_to_load_something_is_caught(report_run, tmp_path):
    """The check above is not vacuous: a remote image and script are refused, and listed."""
    html = report_run.report.read_text()
    tampered = tmp_path / "tampered.html"
    tampered.write_text(
        html.replace(
            "</main>", '<img src="https://example.com/pixel.png"><script src="http://example.org/x.js"></script></main>'
        )
    )
    dom = chromium(tampered.as_uri(), tmp_path / "profile", "--dump-dom")
    blocked = re.search(r'<html lang="en" data-blocked="([^"]*)"', dom).group(1).split()
    assert sorted(blocked) == ["http://example.org/x.js", "https://example.com/pixel.png"]
    assert "geoseg-overlay-scene" in dom  # the map is built all the same


def test_a_run_with_impact_shows_its_table_the_flood_image_and_the_flooded_buildings(
    report_run, tmp_path, page_cells, json_at
):
    page = write_report(with_impact(report_run, tmp_path), report_run.run_id)
    dom = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert re.match(r'<!DOCTYPE html>\s*<html lang="en">', dom)  # nothing tried to load
    pane = overlay_pane(dom)
    images = re.findall(r'<img class="leaflet-image-layer[^"]*geoseg-overlay-(\w+)"[^>]*src="data:image/png', pane)
    assert images == ["scene", "prediction", "flood"]
    control = re.search(r'<section class="leaflet-control-layers-list">(.*?)</section>', dom).group(1)
    names = re.findall(r"<span> (.*?)</span>", control)
    assert names[:3] == ["scene (image)", "prediction (classes)", "flood extent"]
    assert {"zones", "flooded roads", "flooded buildings"} <= set(names)
    data = json.loads(re.search(r'id="geoseg-map-data">(.*?)</script>', dom, re.DOTALL).group(1))
    drawn = sum(len(v["features"]["features"]) for v in data["vectors"] if v["shown"])  # zones start hidden
    assert len(re.findall(r'<path class="leaflet-interactive"', pane)) == drawn
    legend = [re.sub(r"<[^>]+>", "", e) for e in re.findall(r'class="geoseg-legend-entry">(.*?)</div>', dom)]
    assert {"flood water", "permanent water", "flooded building"} <= set(legend)

    section = re.search(r'<section id="impact">.*?</section>', dom, re.DOTALL).group(0)
    metrics = json.loads(page.with_name("metrics.json").read_text())
    cells = [c for c in page_cells(section) if c.key is not None]
    assert len(cells) == 6 * (len(metrics["impact"]["zones"]) + 1)  # every zone, then the totals
    assert all(c.file == "metrics.json" and c.value == json_at(metrics, c.key) for c in cells)
