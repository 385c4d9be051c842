"""The map's polygons: streamed in batches, the largest kept, pop-up fields, and nothing the page cannot parse."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
from shapely.geometry import box

from geoseg.report.vectors import thinned_layer


def write_features(path, n: int, *, ids: bool) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(3)
    sides = rng.uniform(1e-5, 1e-4, n)
    frame = gpd.GeoDataFrame(
        {
            "class": ["building"] * n,
            "class_id": [2] * n,
            "area_m2": np.round(sides * sides * 1.2e10, 3),
            **({"id": np.arange(1, n + 1), "score": np.where(np.arange(n) % 2 == 0, np.nan, 0.9)} if ids else {}),
        },
        geometry=[box(15 + i * 2e-4, 45, 15 + i * 2e-4 + s, 45 + s) for i, s in enumerate(sides)],
        crs="EPSG:4326",
    )
    frame.to_file(path, driver="GeoJSON")
    return frame


def test_the_largest_are_kept_across_batches_in_order_of_area(tmp_path):
    frame = write_features(tmp_path / "polygons.geojson", 50, ids=False)
    layer = thinned_layer(tmp_path / "polygons.geojson", tolerance_deg=0, max_features=5, batch_size=7)
    order = np.argsort(-frame["area_m2"].to_numpy(), kind="stable")[:5]
    assert [f["properties"]["row"] for f in layer.features["features"]] == order.tolist()
    assert [f["properties"]["area_m2"] for f in layer.features["features"]] == frame["area_m2"].iloc[order].tolist()
    assert (layer.count, layer.total, layer.popup) == (5, 50, ("row", "class", "class_id", "area_m2"))
    assert "the 5 largest of 50 features" in layer.note and "45 smaller ones are left out" in layer.note


def test_a_vertex_budget_cuts_further_and_ids_replace_rows(tmp_path):
    frame = write_features(tmp_path / "polygons.geojson", 20, ids=True)
    layer = thinned_layer(tmp_path / "polygons.geojson", tolerance_deg=0, max_vertices=5 * 3)
    assert layer.count == 3 and layer.total == 20  # five corners a box (the first repeated): three boxes
    assert layer.popup == ("id", "class", "class_id", "score", "area_m2")
    properties = [f["properties"] for f in layer.features["features"]]
    assert all("row" not in p and p["id"] >= 1 for p in properties)
    json.dumps(layer.features, allow_nan=False)  # a missing score is null, never NaN (the page's JSON.parse)
    scores = dict(zip(frame["id"], frame["score"], strict=True))
    assert all((p["score"] is None) == bool(np.isnan(scores[p["id"]])) for p in properties)


def test_an_empty_file_gives_an_empty_layer(tmp_path):
    gpd.GeoDataFrame({"class": [], "area_m2": []}, geometry=[], crs="EPSG:4326").to_file(
        tmp_path / "polygons.geojson", driver="GeoJSON"
    )
    layer = thinned_layer(tmp_path / "polygons.geojson", tolerance_deg=1e-6)
    assert (layer.count, layer.total, layer.bounds) == (0, 0, None)
    assert layer.note == "polygons: all 0 features of polygons.geojson"
