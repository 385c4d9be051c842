"""What a report shows, as typed records: read from what a run left on disk, or handed in by a later stage.

``metrics.json`` and ``train/history.json`` are parsed into :class:`RunMetrics` and
:class:`TrainingHistory` once, here, so the page code never digs in nested dicts, and a change
to those files' form is a change in one place. Each record keeps the JSON pointer (RFC 6901) of
where it came from: the page puts it on every number (``data-key``), so a reader or a test can
check each number against the file it was read from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Epoch",
    "ImageOverlay",
    "ImpactRow",
    "ImpactTable",
    "InstanceScores",
    "LatLonBounds",
    "LegendEntry",
    "ReportExtras",
    "RunMetrics",
    "Scores",
    "TrainingHistory",
    "VectorLayer",
    "json_pointer",
    "read_history",
    "read_metrics",
]

Number = int | float | None


def json_pointer(*parts: str | int) -> str:
    """``("model", "per_class_iou", "a/b")`` → ``/model/per_class_iou/a~1b`` (RFC 6901: class names may hold ``/``)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


@dataclass(frozen=True)
class Scores:
    """One block of scores (``model``, ``colour_baseline``) as :func:`geoseg.evaluate.metrics.scores_from_confusion`."""

    key: str  # its JSON pointer in metrics.json
    title: str
    pixel_accuracy: float | None
    mean_accuracy: float | None
    mean_iou: float | None
    frequency_weighted_iou: float | None
    per_class_iou: dict[str, float | None]
    per_class_f1: dict[str, float | None]
    per_class_accuracy: dict[str, float | None]
    pixels: int | None
    confusion_matrix: list[list[int]]
    class_names: list[str]

    SUMMARY = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou", "pixels")

    @classmethod
    def parse(cls, data: dict[str, Any], key: str, title: str) -> Scores:
        names = [str(n) for n in data.get("class_names") or data.get("per_class_iou", {})]
        return cls(
            key=key,
            title=title,
            pixel_accuracy=data.get("pixel_accuracy"),
            mean_accuracy=data.get("mean_accuracy"),
            mean_iou=data.get("mean_iou"),
            frequency_weighted_iou=data.get("frequency_weighted_iou"),
            per_class_iou=dict(data.get("per_class_iou", {})),
            per_class_f1=dict(data.get("per_class_f1", {})),
            per_class_accuracy=dict(data.get("per_class_accuracy", {})),
            pixels=data.get("pixels"),
            confusion_matrix=[list(row) for row in data.get("confusion_matrix", [])],
            class_names=names,
        )

    def summary(self, name: str) -> Number:
        return getattr(self, name)

    def precision(self) -> dict[str, float | None]:
        """Per class: predicted pixels that are right, from the confusion matrix's columns (not stored in the file).

        Rows are truth and columns prediction, so a column's sum is what was predicted as that class.
        """
        matrix = self.confusion_matrix
        if len(matrix) != len(self.class_names):
            return {}
        found: dict[str, float | None] = {}
        for j, name in enumerate(self.class_names):
            predicted = sum(row[j] for row in matrix)
            found[name] = matrix[j][j] / predicted if predicted else None
        return found


@dataclass(frozen=True)
class InstanceScores:
    """``metrics.json`` → ``instances``: one-to-one matches at IoU 0.5, error counts and COCO mask AP."""

    key: str
    values: tuple[tuple[str, Number], ...]  # in the order the file holds them
    skipped: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], key: str) -> InstanceScores:
        values = tuple((k, v) for k, v in data.items() if isinstance(v, int | float) or v is None)
        skipped = data.get("skipped")
        return cls(key=key, values=values, skipped=str(skipped) if skipped is not None else None)


@dataclass(frozen=True)
class Epoch:
    epoch: int
    loss: float | None
    validation: float | None


@dataclass(frozen=True)
class TrainingHistory:
    """Loss and the validation score per epoch, and where each number lives (``file`` and ``key``)."""

    file: str  # relative to output_dir: metrics.json, or train/history.json when no evaluation ran
    key: str  # the JSON pointer of the history object in that file
    epochs: tuple[Epoch, ...]
    validation_key: str  # "val_miou", or "val_f1" for instance models
    validation_name: str
    best_epoch: int | None
    stopped_early: bool

    @classmethod
    def parse(cls, data: dict[str, Any], *, file: str, key: str) -> TrainingHistory:
        rows = data.get("epochs", [])
        instance = any("val_f1" in row for row in rows)
        validation_key, name = ("val_f1", "F1 at IoU 0.5") if instance else ("val_miou", "mIoU")
        epochs = tuple(Epoch(int(row["epoch"]), row.get("loss"), row.get(validation_key)) for row in rows)
        best = data.get("best_epoch")
        return cls(
            file=file,
            key=key,
            epochs=epochs,
            validation_key=validation_key,
            validation_name=name,
            best_epoch=int(best) if best is not None else None,
            stopped_early=bool(data.get("stopped_early")),
        )


@dataclass(frozen=True)
class RunMetrics:
    """``metrics.json`` as the evaluate stage writes it."""

    job: str | None
    scene: str | list[str] | None
    model: Scores
    colour_baseline: Scores | None
    instances: InstanceScores | None
    training: TrainingHistory | None
    written: str  # the file's modification time (UTC): a run without evaluate shows an earlier run's scores


def read_metrics(path: Path) -> RunMetrics:
    data = json.loads(path.read_text())
    written = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(path.stat().st_mtime))
    baseline = data.get("colour_baseline")
    instances = data.get("instances")
    training = data.get("training")
    return RunMetrics(
        job=data.get("job"),
        scene=data.get("scene"),
        model=Scores.parse(data["model"], json_pointer("model"), "model"),
        colour_baseline=(
            Scores.parse(baseline, json_pointer("colour_baseline"), "colour baseline") if baseline else None
        ),
        instances=InstanceScores.parse(instances, json_pointer("instances")) if instances else None,
        training=TrainingHistory.parse(training, file=path.name, key=json_pointer("training")) if training else None,
        written=written,
    )


def read_history(path: Path, file: str) -> TrainingHistory:
    return TrainingHistory.parse(json.loads(path.read_text()), file=file, key="")


# --- the map ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatLonBounds:
    """Degrees on WGS 84 (EPSG:4326)."""

    south: float
    west: float
    north: float
    east: float

    def leaflet(self) -> list[list[float]]:
        return [[self.south, self.west], [self.north, self.east]]

    def union(self, other: LatLonBounds) -> LatLonBounds:
        return LatLonBounds(
            min(self.south, other.south),
            min(self.west, other.west),
            max(self.north, other.north),
            max(self.east, other.east),
        )


@dataclass(frozen=True)
class ImageOverlay:
    """A PNG shown over the map between ``bounds``; its pixels must be on a Web Mercator grid (see report.js)."""

    id: str  # the overlay's <img> gets the class geoseg-overlay-<id>
    name: str
    png: bytes
    bounds: LatLonBounds
    opacity: float = 1.0
    shown: bool = True


@dataclass(frozen=True)
class VectorLayer:
    """Features in EPSG:4326 (a GeoJSON FeatureCollection, the format Leaflet reads) with pop-ups."""

    id: str
    name: str
    features: dict[str, Any]
    popup: tuple[str, ...]  # the properties a pop-up lists, in this order, where a feature has them
    total: int  # features in the source; more than ``len(features["features"])`` when thinned
    bounds: LatLonBounds | None = None
    shown: bool = True
    note: str = ""  # said under the map: what was left out, and why

    @property
    def count(self) -> int:
        return len(self.features["features"])


@dataclass(frozen=True)
class LegendEntry:
    name: str
    colour: str
    note: str = ""


@dataclass(frozen=True)
class ImpactRow:
    zone: str
    values: tuple[Number, ...]  # one per ImpactTable.columns
    # Each value's JSON pointer in the table's file, where rows are objects of named numbers rather than
    # ``values`` lists (metrics.json's ``impact``: zones by name, and the totals at its top level).
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImpactTable:
    """Per-zone impact totals: the impact stage builds it; the page shows it as given."""

    columns: tuple[str, ...]  # e.g. ("flooded area (m²)", "buildings affected", "road length (m)")
    rows: tuple[ImpactRow, ...]
    # Where the numbers are stored, if in a JSON file (relative to output_dir), and the pointer of the
    # list of rows there: row r's value c is then tagged ``<key>/<r>/values/<c>`` on the page, or the
    # row's own ``keys[c]`` where it has them.
    file: str = ""
    key: str = ""


@dataclass(frozen=True)
class ReportExtras:
    """What a later stage adds to the page: the impact stage's per-zone table, flood extent, affected buildings.

    ``overlays`` are drawn above the scene and prediction, ``vectors`` above the run's own polygons;
    ``legend`` follows the classes' (the colours of the overlays, and of features by their ``class``).
    """

    impact: ImpactTable | None = None
    overlays: tuple[ImageOverlay, ...] = field(default_factory=tuple)
    vectors: tuple[VectorLayer, ...] = field(default_factory=tuple)
    legend: tuple[LegendEntry, ...] = field(default_factory=tuple)
