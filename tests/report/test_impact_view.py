"""The impact stage's outputs on the report, from real impact outputs (no model): table, flood image, layers.

The scene is the impact tests' own (tests/impact/test_assess.py): a lake that grew and a river, five
buildings, two roads and two zones, assessed by the real stage code into ``<out>/impact`` beside
``<out>/mosaic.zarr``, so :class:`JobPaths` finds both as after a run.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from PIL import Image
from pyproj import Transformer
from scipy import ndimage

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.impact.assess import ImpactInputs, assess_impact
from geoseg.impact.assets import AssetLayer
from geoseg.impact.flood import FLOOD
from geoseg.impact.reference import PreEventMosaic
from geoseg.impact.zones import Zones
from geoseg.io.mosaic import open_mosaic
from geoseg.report import write_report
from geoseg.report.impact_view import FLOOD_COLOUR, PERMANENT_COLOUR, impact_extras
from geoseg.report.overlays import mercator_grid, prediction_overlay
from geoseg.report.tables import impact_table
from tests.impact.test_flood import GRID, SIZE, make_mosaic, post_event, pre_event

RUN_ID = "20990101T000000Z-beef"
WATER = 1  # in the impact tests' classes and the report run's alike


def _box(transform: Affine, col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    (x0, y0), (x1, y1) = transform @ (col0, row0), transform @ (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def write_impact(root: Path, pre: tuple[np.ndarray, np.ndarray], buildings: list, road_cells: list) -> dict:
    """Assess ``root/mosaic.zarr`` against ``pre`` into ``root/impact``; note it in metrics.json as the stage does.

    ``buildings`` and ``road_cells`` are in pixels (col/row boxes, col/row vertices); the zones are the
    west and east halves of the mosaic.
    """
    mosaic = open_mosaic(root / "mosaic.zarr")
    crs, t, side = mosaic.crs.to_wkt(), mosaic.transform, mosaic.width
    pre_path = make_mosaic(root / "pre_event" / "mosaic.zarr", *pre, crs=mosaic.crs, transform=t, chunk=mosaic.chunk)
    assets = root / "assets"
    assets.mkdir()
    gpd.GeoDataFrame(
        {"class": ["building"] * len(buildings)}, geometry=[_box(t, *b) for b in buildings], crs=crs
    ).to_file(assets / "buildings.gpkg")
    lines = [shapely.LineString([t @ vertex for vertex in cells]) for cells in road_cells]
    gpd.GeoDataFrame({"name": [f"R{i}" for i in range(len(lines))]}, geometry=lines, crs=crs).to_file(
        assets / "roads.gpkg"
    )
    halves = [_box(t, 0, 0, side // 2, mosaic.height), _box(t, side // 2, 0, side, mosaic.height)]
    gpd.GeoDataFrame({"name": ["West", "East"]}, geometry=halves, crs=crs).to_file(assets / "zones.gpkg")
    assess_impact(
        ImpactInputs(
            mosaic=root / "mosaic.zarr",
            reference=PreEventMosaic(pre_path),
            water_class=WATER,
            folder=JobPaths(root).impact,
            buildings=AssetLayer(assets / "buildings.gpkg"),
            roads=AssetLayer(assets / "roads.gpkg"),
            zones=Zones(assets / "zones.gpkg", "name", mosaic.crs),
        )
    )
    summary = json.loads((JobPaths(root).impact / "impact.json").read_text())
    metrics_path = JobPaths(root).metrics
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics_path.write_text(json.dumps(metrics | {"impact": summary}, indent=2))
    return summary


def with_impact(report_run, folder: Path) -> Job:
    """The report run (copied into ``folder``) with an impact stage: the lower half's water is new."""
    job = report_run.copy(folder)
    root = JobPaths.of(job).root
    mosaic = open_mosaic(root / "mosaic.zarr")
    labels, valid = np.asarray(mosaic.labels[:]), np.asarray(mosaic.valid[:])
    before = np.where((labels == WATER) & (np.arange(mosaic.height)[:, None] < mosaic.height // 2), WATER, 0)
    write_impact(
        root,
        (before.astype(np.uint8), valid),
        buildings=[(160, 97, 170, 104), (30, 30, 36, 36), (170, 95, 180, 104)],  # two in the new water of the strip
        road_cells=[[(185.5, 0.5), (185.5, 191.5)]],
    )
    return job


@pytest.fixture(scope="module")
def impact_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("impact_run")
    make_mosaic(root / "mosaic.zarr", *post_event())
    write_impact(
        root,
        pre_event(),
        buildings=[(22, 40, 26, 44), (84, 40, 90, 46), (30, 29, 36, 35), (2, 2, 6, 6), (70, 10, 85, 20)],
        road_cells=[[(0.5, 5), (95.5, 90)], [(88, 2), (88, 60)]],
    )
    return root


def _image(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def _rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_without_impact_json_there_is_nothing_to_add(tmp_path):
    assert impact_extras(JobPaths(tmp_path)) is None


def test_the_table_is_metrics_json_impact_zones_then_the_totals_each_tagged(impact_run, page_cells, json_at):
    extras = impact_extras(JobPaths(impact_run))
    assert extras is not None and extras.impact is not None
    table = extras.impact
    impact = json.loads((impact_run / "metrics.json").read_text())["impact"]
    assert impact == json.loads((impact_run / "impact" / "impact.json").read_text())
    names = ["flooded_km2", "mapped_km2", "buildings_flooded", "buildings", "road_km_flooded", "road_km"]
    assert [row.zone for row in table.rows] == [z["zone"] for z in impact["zones"]] + ["(all)"]
    for row, zone in zip(table.rows, impact["zones"], strict=False):
        assert row.values == tuple(zone[name] for name in names)
    totals = ["flood_km2", "mapped_km2", "buildings_flooded", "buildings", "road_km_flooded", "road_km"]
    assert table.rows[-1].values == tuple(impact[name] for name in totals)
    assert impact["buildings_flooded"] == 2 and table.file == "metrics.json"

    cells = page_cells(impact_table(table))
    metrics = json.loads((impact_run / "metrics.json").read_text())
    assert len(cells) == 6 * len(table.rows) and all(c.file == "metrics.json" for c in cells)
    assert {c.key for c in cells} >= {"/impact/zones/0/flooded_km2", "/impact/zones/1/road_km", "/impact/flood_km2"}
    assert all(c.value == json_at(metrics, c.key) for c in cells)


@pytest.mark.parametrize(("max_side", "margin"), [(1024, 1), (40, 3)], ids=["base", "every-3rd-pixel"])
def test_the_flood_image_shows_the_flood_array_on_the_prediction_grid(impact_run, max_side, margin):
    mosaic = open_mosaic(impact_run / "mosaic.zarr")
    extras = impact_extras(JobPaths(impact_run), max_side=max_side)
    assert extras is not None
    (overlay,) = extras.overlays
    grid = mercator_grid(mosaic, max_side)
    assert overlay.id == "flood" and overlay.bounds == prediction_overlay(mosaic, grid, max_side).bounds
    image = _image(overlay.png)
    assert image.shape[:2] == (grid.height, grid.width) and max(image.shape[:2]) <= max_side

    codes = np.asarray(mosaic.array(FLOOD)[:])
    size = 2 * margin + 1  # pixels whose neighbourhood holds one code: nearest sampling cannot miss it
    same = ndimage.maximum_filter(codes, size) == ndimage.minimum_filter(codes, size)
    i, j = np.mgrid[: grid.height, : grid.width]
    x, y = grid.transform @ (j.ravel() + 0.5, i.ravel() + 0.5)
    sx, sy = Transformer.from_crs("EPSG:3857", mosaic.crs, always_xy=True).transform(x, y)
    col, row = ~GRID @ (np.asarray(sx), np.asarray(sy))
    row, col = np.floor(row).astype(int), np.floor(col).astype(int)
    inside = (row >= 0) & (row < SIZE) & (col >= 0) & (col < SIZE)
    pixels = image.reshape(-1, 4)[inside]
    code = codes[row[inside], col[inside]]
    sure = same[row[inside], col[inside]]
    flood, permanent = sure & (code == 2), sure & (code == 1)
    clear = sure & ((code == 0) | (code == 255))
    assert flood.sum() > (200 if max_side > SIZE else 20) and permanent.sum() > 20 and clear.sum() > 200
    assert (pixels[flood][:, :3] == _rgb(FLOOD_COLOUR)).all() and (pixels[flood][:, 3] > 200).all()
    assert (pixels[permanent][:, :3] == _rgb(PERMANENT_COLOUR)).all() and (pixels[permanent][:, 3] > 0).all()
    assert (pixels[clear][:, 3] == 0).all()
    assert [e.name for e in extras.legend][:2] == ["flood water", "permanent water"]


def test_the_buildings_layer_holds_exactly_the_flooded_buildings_with_their_pop_ups(impact_run):
    extras = impact_extras(JobPaths(impact_run))
    assert extras is not None
    layers = {layer.id: layer for layer in extras.vectors}
    assert list(layers) == ["zones", "roads", "buildings"]  # buildings drawn last: on top, clickable
    buildings = layers["buildings"]
    every = gpd.read_file(impact_run / "impact" / "buildings.geojson")
    flooded = every[every["flooded"]]
    assert buildings.popup == ("building_id", "zone", "flooded_share", "water_confidence", "area_m2")
    properties = [f["properties"] for f in buildings.features["features"]]
    assert sorted(p["building_id"] for p in properties) == sorted(flooded["building_id"]) and len(properties) == 2
    for p in properties:
        source = every.iloc[p["row"]]  # the row of the file, not of the flooded subset
        assert source["building_id"] == p["building_id"] and bool(source["flooded"]) and p["flooded"] is True
        assert (p["zone"], p["flooded_share"], p["area_m2"]) == (
            source["zone"],
            source["flooded_share"],
            source["area_m2"],
        )
    assert buildings.total == 2 and "all 2 features of buildings.geojson where flooded = 1" in buildings.note
    json.dumps(buildings.features, allow_nan=False)  # an unknown water_confidence is null, never NaN


def test_zones_and_flooded_roads_are_layers_with_their_totals(impact_run):
    extras = impact_extras(JobPaths(impact_run))
    assert extras is not None
    layers = {layer.id: layer for layer in extras.vectors}
    impact = json.loads((impact_run / "impact" / "impact.json").read_text())
    zones = {f["properties"]["zone"]: f["properties"] for f in layers["zones"].features["features"]}
    assert set(zones) == {"West", "East"} and not layers["zones"].shown  # off until chosen: it covers the map
    for zone in impact["zones"]:
        if zone["zone"] in zones:
            assert {k: zones[zone["zone"]][k] for k in zone} == pytest.approx(zone)
    roads = layers["roads"]
    assert roads.popup == ("road_id", "name", "zone", "flooded_m")
    frame = gpd.read_file(impact_run / "impact" / "roads.geojson")
    got = sorted(f["properties"]["flooded_m"] for f in roads.features["features"])
    assert got == pytest.approx(sorted(frame["flooded_m"])) and sum(got) > 50
    assert {e.name for e in extras.legend} >= {"zone", "flooded road", "flooded building"}


def test_a_large_layer_is_cut_to_the_largest_and_says_so(impact_run):
    extras = impact_extras(JobPaths(impact_run), max_features=1)
    assert extras is not None
    buildings = next(layer for layer in extras.vectors if layer.id == "buildings")
    every = gpd.read_file(impact_run / "impact" / "buildings.geojson")
    largest = every[every["flooded"]]["area_m2"].max()
    assert [f["properties"]["area_m2"] for f in buildings.features["features"]] == [largest]
    assert buildings.name == "flooded buildings (1 of 2)" and "1 smaller ones are left out" in buildings.note


def test_write_report_adds_the_impact_of_the_run_by_default(report_run, tmp_path, page_cells, json_at, number_text):
    html = write_report(with_impact(report_run, tmp_path), RUN_ID).read_text()
    section = re.search(r'<section id="impact">.*?</section>', html, re.DOTALL).group(0)
    assert "<th>West</th>" in section and "<th>(all)</th>" in section
    data = json.loads(re.search(r'id="geoseg-map-data">(.*?)</script>', html, re.DOTALL).group(1))
    assert [o["id"] for o in data["overlays"]] == ["scene", "prediction", "flood"]
    assert data["overlays"][2]["bounds"] == data["overlays"][1]["bounds"]
    assert [v["id"] for v in data["vectors"]] == ["polygons", "zones", "roads", "buildings"]
    assert data["colours"]["flood water"] == FLOOD_COLOUR
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["impact"]["buildings_flooded"] == 2
    keyed = [c for c in page_cells(html) if c.key is not None]
    assert sum(c.key.startswith("/impact/") for c in keyed) == 6 * (len(metrics["impact"]["zones"]) + 1)
    for cell in keyed:
        assert cell.value == json_at(metrics, cell.key) and cell.text == number_text(cell.value), cell
