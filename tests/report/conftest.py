"""A finished run's outputs on the tiny scene, made without Ray or training, and a reader of the page's numbers.

The mosaic is the reference with known mistakes painted in (so no score is 1), vectorized and
evaluated by the real stage code; ``train/history.json`` is written as the train stage writes it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from rasterio.features import rasterize

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.io.mosaic import create_mosaic, mark_done, write_block
from geoseg.io.raster import inspect_scene
from geoseg.job import load_job
from geoseg.report import write_report
from tests.factories import tiny_job, tiny_scene

RUN_ID = "20990101T000000Z-beef"
CHUNK = 64
HISTORY = {
    "epochs": [
        {"epoch": 1, "loss": 1.25, "val_miou": 0.41},
        {"epoch": 2, "loss": 0.8125, "val_miou": 0.5625},
        {"epoch": 3, "loss": 0.6, "val_miou": 0.55},
    ],
    "best_epoch": 2,
    "stopped_early": False,
}


@dataclass(frozen=True)
class ReportRun:
    job: Job
    paths: JobPaths
    report: Path
    run_id: str
    history: dict

    def copy(self, folder: Path) -> Job:
        """The same job on a copy of its outputs in ``folder``: for a test that writes its own page."""
        shutil.copytree(self.paths.root, folder / "out")
        return self.job.model_copy(update={"output_dir": folder / "out"})


def _predicted(job: Job, scene: Path, labels: Path) -> None:
    """The reference rasterized, with a strip of background and a false band of vegetation, as the mosaic."""
    info = inspect_scene(scene)
    frame = gpd.read_file(labels)
    index = {name: i for i, name in enumerate(job.classes)}
    truth = rasterize(
        [(geom, index[c]) for geom, c in zip(frame.geometry, frame["class"], strict=True)],
        out_shape=(info.height, info.width),
        transform=info.transform,
        fill=0,
        dtype="uint8",
    )
    labels_px = truth.copy()
    labels_px[:, :20] = 0
    labels_px[100:110, 50:150] = 2
    paths = JobPaths.of(job)
    mosaic = create_mosaic(
        paths.mosaic,
        height=info.height,
        width=info.width,
        chunk=CHUNK,
        crs=info.crs,
        transform=info.transform,
        class_names=job.classes,
        fingerprint={"scene": str(scene), "bands": [1, 2, 3]},  # as predict records what it read
    )
    for row in range(0, info.height, CHUNK):
        for col in range(0, info.width, CHUNK):
            block = labels_px[row : row + CHUNK, col : col + CHUNK]
            write_block(mosaic, row, col, block, np.ones_like(block))
            mark_done(mosaic, row, col)


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> ReportRun:
    from geoseg.stages.evaluate import run_evaluate
    from geoseg.vectorize.classes import vectorize_mosaic

    folder = tmp_path_factory.mktemp("report_run")
    scene, labels = tiny_scene(folder)
    job = load_job(tiny_job(folder, scene, labels, evaluate={"labels": str(labels), "colour_baseline": True}))
    paths = JobPaths.of(job)
    _predicted(job, scene, labels)
    vectorize_mosaic(paths.mosaic, paths.vectors)
    paths.train_dir.mkdir(parents=True, exist_ok=True)
    paths.training_history.write_text(json.dumps(HISTORY, indent=2))
    run_evaluate(job, log=lambda message: None)
    return ReportRun(job, paths, write_report(job, RUN_ID), RUN_ID, HISTORY)


@dataclass(frozen=True)
class Cell:
    """A number on the page: the file its table names, its JSON pointer there (or what it derives), value, text."""

    file: str
    key: str | None
    derived: str | None
    value: object
    text: str


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[Cell] = []
        self.file = ""
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.file = attrs.get("data-file", "")
        if "data-value" in attrs:
            self._open = attrs | {"text": ""}

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if self._open is not None and tag == "td":
            a = self._open
            self.cells.append(
                Cell(self.file, a.get("data-key"), a.get("data-derived"), json.loads(a["data-value"]), a["text"])
            )
            self._open = None


@pytest.fixture(scope="session")
def page_cells():
    """Every number cell of a page (report.html, or the DOM a browser made of it)."""

    def read(html: str) -> list[Cell]:
        parser = _Cells()
        parser.feed(html)
        return parser.cells

    return read


def resolve(document, pointer: str):
    """RFC 6901: the value ``pointer`` names in ``document``."""
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


@pytest.fixture(scope="session")
def json_at():
    return resolve


def formatted(value) -> str:
    """The page's number format, written out again here: whole numbers with commas, others to 4 places, – for none."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}"


@pytest.fixture(scope="session")
def number_text():
    return formatted
