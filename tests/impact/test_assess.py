"""Impact outputs against direct geopandas recomputations: per building, per road, per zone."""

from __future__ import annotations

import json
import pickle

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import Geod

from geoseg.impact.assess import ALL, ImpactInputs, assess_impact
from geoseg.impact.assets import AssetLayer
from geoseg.impact.flood import FLOOD
from geoseg.impact.reference import PreEventMosaic
from geoseg.impact.scores import building_scores, flood_scores
from geoseg.impact.zones import Zones
from geoseg.io.mosaic import open_mosaic
from tests.impact.test_flood import GRID, SIZE, UTM, WATER, make_mosaic, post_event, pre_event

BUFFER_M = 2.0


def _pixel_centres():
    rows, cols = np.mgrid[:SIZE, :SIZE]
    x, y = GRID @ (cols + 0.5, rows + 0.5)
    return shapely.points(np.asarray(x).ravel(), np.asarray(y).ravel())


def _map_box(col0, row0, col1, row1):
    (x0, y0), (x1, y1) = GRID @ (col0, row0), GRID @ (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@pytest.fixture
def scene(tmp_path):
    labels, valid = post_event()
    pre_labels, pre_valid = pre_event()
    post = make_mosaic(tmp_path / "post.zarr", labels, valid)
    pre = make_mosaic(tmp_path / "pre.zarr", pre_labels, pre_valid)
    # Buildings: in the flooded part of the lake's shore, on dry land, one across a chunk seam, one in no data.
    buildings = [
        _map_box(22, 40, 26, 44),  # in the flooded ring of the lake
        _map_box(84, 40, 90, 46),  # dry, east of the lake
        _map_box(30, 29, 36, 35),  # across the chunk seam at row/col 32, in the flood
        _map_box(2, 2, 6, 6),  # in the no-data corner
        _map_box(70, 10, 85, 20),  # the building of the label raster, dry
    ]
    gpd.GeoDataFrame({"class": ["building"] * 5}, geometry=buildings, crs=UTM.to_wkt()).to_file(
        tmp_path / "polygons.gpkg", engine="pyogrio"
    )
    # Roads: one across the whole scene through lake and river (many bands), one on dry land.
    (xa, ya), (xb, yb) = GRID @ (0.5, 5), GRID @ (95.5, 90)
    (xc, yc), (xd, yd) = GRID @ (88, 2), GRID @ (88, 60)
    roads = gpd.GeoDataFrame(
        {"name": ["A1", "B2"]},
        geometry=[shapely.LineString([(xa, ya), (xb, yb)]), shapely.LineString([(xc, yc), (xd, yd)])],
        crs=UTM.to_wkt(),
    )
    roads.to_file(tmp_path / "roads.gpkg", engine="pyogrio")
    # Zones: west and east halves, stored in EPSG:4326 (reprojected on reading).
    halves = [_map_box(0, 0, 48, SIZE), _map_box(48, 0, SIZE, SIZE)]
    zones = gpd.GeoDataFrame({"name": ["West", "East"]}, geometry=halves, crs=UTM.to_wkt())
    zones.to_crs("EPSG:4326").to_file(tmp_path / "zones.gpkg", engine="pyogrio")
    return post, pre, tmp_path


def _inputs(post, pre, folder, buffer_m=BUFFER_M):
    return ImpactInputs(
        mosaic=post,
        reference=PreEventMosaic(pre),
        water_class=WATER,
        folder=folder / "impact",
        buildings=AssetLayer(folder / "polygons.gpkg", where="class = 'building'"),
        roads=AssetLayer(folder / "roads.gpkg"),
        zones=Zones(folder / "zones.gpkg", "name", UTM),
        buffer_m=buffer_m,
        min_share=0.1,
    )


def test_buildings_and_zones_equal_a_direct_recomputation(scene):
    post, pre, folder = scene
    summary = assess_impact(_inputs(post, pre, folder))
    codes = np.asarray(open_mosaic(post).array(FLOOD)[:]).ravel()
    centres = _pixel_centres()
    zones = gpd.read_file(folder / "zones.gpkg").to_crs(UTM.to_wkt())

    got = gpd.read_file(folder / "impact" / "impact.gpkg", layer="buildings").sort_values("building_id")
    source = gpd.read_file(folder / "polygons.gpkg", fid_as_index=True)
    assert sorted(got["building_id"]) == sorted(source.index)
    for row in got.itertuples():
        footprint = source.geometry.loc[row.building_id]
        inside = shapely.contains_xy(footprint.buffer(BUFFER_M), *shapely.get_coordinates(centres).T)
        known = inside & (codes != 255)
        share = (known & (codes == 2)).sum() / known.sum() if known.any() else np.nan
        assert row.flooded_share == pytest.approx(share, nan_ok=True)
        assert row.flooded == (share >= 0.1)
        home = zones[zones.contains(footprint.representative_point())]["name"].tolist()
        assert row.zone == (home[0] if home else "")
    assert got["flooded"].tolist() == [True, False, True, False, False]

    table = pd.read_csv(folder / "impact" / "impact.csv").set_index("zone")
    for zone in zones.itertuples():
        in_zone = shapely.contains_xy(zone.geometry, *shapely.get_coordinates(centres).T)
        assert table.loc[zone.name, "flooded_km2"] == pytest.approx((in_zone & (codes == 2)).sum() * 4 / 1e6)
        assert table.loc[zone.name, "mapped_km2"] == pytest.approx((in_zone & (codes != 255)).sum() * 4 / 1e6)
        mine = got[got["zone"] == zone.name]
        assert table.loc[zone.name, "buildings"] == len(mine)
        assert table.loc[zone.name, "buildings_flooded"] == mine["flooded"].sum()
    assert table.loc[ALL, "flooded_km2"] == pytest.approx((codes == 2).sum() * 4 / 1e6)
    assert summary.total.buildings_flooded == 2
    metrics = json.loads((folder / "impact" / "impact.json").read_text())
    assert metrics["buildings_flooded"] == 2 and len(metrics["zones"]) == 2


def test_flooded_road_lengths_equal_the_lines_cut_by_flood_pixels(scene):
    post, pre, folder = scene
    assess_impact(_inputs(post, pre, folder, buffer_m=0.0))
    codes = np.asarray(open_mosaic(post).array(FLOOD)[:])
    rows, cols = np.nonzero(codes == 2)
    water = shapely.union_all([_map_box(c, r, c + 1, r + 1) for r, c in zip(rows, cols, strict=True)])
    lines = gpd.read_file(folder / "roads.gpkg", fid_as_index=True)
    got = gpd.read_file(folder / "impact" / "impact.gpkg", layer="roads")
    geod = Geod(ellps="WGS84")
    for fid, line in lines.geometry.items():
        wet = gpd.GeoSeries([line.intersection(water)], crs=UTM.to_wkt()).to_crs("EPSG:4326").iloc[0]
        want = geod.geometry_length(wet)
        assert got.loc[got["road_id"] == fid, "flooded_m"].sum() == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert got["flooded_m"].sum() > 50  # the long road crosses the flooded lake
    assert set(got["name"]) == {"A1"}


def test_outputs_open_as_layers_and_geojson_is_lon_lat(scene):
    post, pre, folder = scene
    ray_like = lambda function, arguments: (function(*pickle.loads(pickle.dumps(a))) for a in arguments)
    assess_impact(_inputs(post, pre, folder), run_tasks=ray_like)
    out = folder / "impact"
    layers = dict(pyogrio.list_layers(out / "impact.gpkg"))
    assert layers == {
        "flood_extent": "MultiPolygon",
        "buildings": "MultiPolygon",
        "roads": "MultiLineString",
        "zones": "MultiPolygon",
    }
    extent = gpd.read_file(out / "impact.gpkg", layer="flood_extent")
    codes = np.asarray(open_mosaic(post).array(FLOOD)[:])
    assert extent.area.sum() == pytest.approx((codes == 2).sum() * 4.0)
    for layer in layers:
        frame = gpd.read_file(out / f"{layer}.geojson")
        assert frame.crs.to_epsg() == 4326
        assert len(frame) == len(gpd.read_file(out / "impact.gpkg", layer=layer))
        lon, lat = shapely.get_coordinates(frame.geometry.values).T
        assert (abs(lon - 12.4) < 1).all() and (abs(lat - 45.1) < 1).all()  # UTM 33N at 300 km E, 5000 km N
    assert not list(out.glob(".*"))  # no partials or scratch left


def test_scores_against_a_flood_truth_and_flooded_buildings(scene):
    post, pre, folder = scene
    assess_impact(_inputs(post, pre, folder))
    codes = np.asarray(open_mosaic(post).array(FLOOD)[:])
    truth = codes.copy()
    truth[40:50, 20:30] = 0  # some flood the truth says is dry
    truth[74:76, :] = 2  # some permanent water the truth says is flood
    truth_tif = folder / "flood_truth.tif"
    with rasterio.open(
        truth_tif,
        "w",
        driver="GTiff",
        height=SIZE,
        width=SIZE,
        count=1,
        dtype="uint8",
        crs=UTM,
        transform=GRID,
        nodata=255,
    ) as out:
        out.write(truth, 1)
    scores = flood_scores(post, truth_tif)
    known = (codes != 255) & (truth != 255)
    hit = (known & (codes == 2) & (truth == 2)).sum()
    union = (known & ((codes == 2) | (truth == 2))).sum()
    assert scores.flood_iou == pytest.approx(hit / union) and 0.5 < scores.flood_iou < 1
    assert scores.permanent_as_flood == (known & (truth == 1) & (codes == 2)).sum() / (known & (truth == 1)).sum()

    source = gpd.read_file(folder / "polygons.gpkg")
    flags = [True, False, False, False, True]  # building 2 is flooded in the prediction only, 4 in the truth only
    gpd.GeoDataFrame({"flooded": flags}, geometry=source.geometry.values, crs=UTM.to_wkt()).to_crs("EPSG:4326").to_file(
        folder / "truth_buildings.gpkg"
    )
    predicted = AssetLayer(folder / "impact" / "impact.gpkg", layer="buildings", where="flooded = 1")
    buildings = building_scores(post, predicted, AssetLayer(folder / "truth_buildings.gpkg", where="flooded = 1"))
    assert (buildings.predicted, buildings.predicted_right, buildings.true, buildings.found) == (2, 1, 2, 1)
    assert buildings.precision == 0.5 and buildings.recall == 0.5 and buildings.f1 == 0.5
