"""The job file's `impact:` section: what the event changed, and what it touched."""

from __future__ import annotations

from pydantic import Field, model_validator

from geoseg.config.base import InputLocation, Strict

__all__ = ["DEFAULT_BUFFER_M", "DEFAULT_MIN_FLOODED_SHARE", "ImpactSpec"]

# A roof stays above the water that surrounds a flooded building, so a building is judged on its footprint
# grown by this much: the ring of ground around it. The demo's ground truth uses the same two numbers.
DEFAULT_BUFFER_M = 2.0
DEFAULT_MIN_FLOODED_SHARE = 0.1


class ImpactSpec(Strict):
    pre_event: InputLocation | None = Field(
        default=None,
        description="A pre-event scene (GeoTIFF, like predict.scene), predicted with the same model in this job "
        "into <output_dir>/pre_event/mosaic.zarr. It may have another grid, resolution or CRS: it is read "
        "window by window onto the post-event grid. Water in both is permanent; water only now is flood.",
    )
    permanent_water: InputLocation | None = Field(
        default=None,
        description="Or a permanent-water polygon layer (GeoPackage, GeoJSON, Shapefile; any CRS), e.g. a "
        "national water-body dataset: water now outside it is flood.",
    )
    water_class: str = Field(default="water", description="The class whose pixels are water.")
    building_class: str | None = Field(
        default="building",
        description="The class whose vectorized polygons are the buildings (the vectorize stage's output); "
        "null: no buildings. For an instance model, its instance polygons of this class.",
    )
    roads: InputLocation | None = Field(
        default=None,
        description="A road-line layer (e.g. an OpenStreetMap extract; any CRS): the flooded stretch of every "
        "line is measured. Default: none (no road figures).",
    )
    buffer_m: float = Field(
        default=DEFAULT_BUFFER_M,
        ge=0,
        description="Metres around a building footprint and on each side of a road line that count as touching "
        "it: a roof stays dry above the water around it.",
    )
    min_flooded_share: float = Field(
        default=DEFAULT_MIN_FLOODED_SHARE,
        gt=0,
        le=1,
        description="A building is flooded when at least this share of its buffered footprint is flood water.",
    )
    zones: InputLocation | None = Field(
        default=None,
        description="Polygons (e.g. districts; any CRS) to total the impact by: flooded area, buildings affected "
        "of all, road length flooded, per zone (impact.csv).",
    )
    zone_field: str = Field(default="name", description="The zones' attribute that names each zone.")

    @model_validator(mode="after")
    def _one_reference(self) -> ImpactSpec:
        if (self.pre_event is None) == (self.permanent_water is None):
            raise ValueError(
                "name what was water before in exactly one of impact.pre_event (a scene) and "
                "impact.permanent_water (a polygon layer)"
            )
        return self
