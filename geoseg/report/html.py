"""``report.html``: one self-contained page per run, next to ``metrics.json``.

Everything the page needs is inside it: Leaflet and its stylesheet (vendored under ``static/``,
see its README), geoseg's script, the images as ``data:`` URIs and the features as JSON. It opens
from disk, offline, in any browser, and can be mailed or archived as one file. It is rebuilt
from what the run left on disk (so it shows a run without an evaluate stage too, with what exists).
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

from geoseg._version import __version__
from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.report.content import ReportExtras, RunMetrics, TrainingHistory, read_history, read_metrics
from geoseg.report.curves import training_svg
from geoseg.report.impact_view import impact_extras
from geoseg.report.mapview import MapContent, map_json, run_map
from geoseg.report.overlays import MAX_SIDE
from geoseg.report.tables import (
    confusion_table,
    epochs_table,
    impact_table,
    instances_table,
    per_class_table,
    summary_table,
)
from geoseg.report.vectors import MAX_FEATURES

__all__ = ["REPORT", "report_path", "write_report"]

REPORT = "report.html"
STATIC = Path(__file__).resolve().parent / "static"
# Nothing may load from anywhere: the page carries its scripts, styles and images (data: URIs) inline.
# The browser enforces this, so even a future edit that links something out cannot make a report fetch.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def report_path(job: Job) -> Path:
    """Where a job's report goes: beside its ``metrics.json``."""
    return JobPaths.of(job).metrics.with_name(REPORT)


def _asset(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _leaflet_css() -> str:
    """Leaflet's stylesheet with its images (layer-switcher and marker icons) inlined: nothing left to fetch."""

    def inline(match: re.Match[str]) -> str:
        png = (STATIC / "images" / match.group(1)).read_bytes()
        return f"url(data:image/png;base64,{base64.b64encode(png).decode('ascii')})"

    css = re.sub(r"/\*.*?\*/", "", _asset("leaflet.css"), flags=re.DOTALL)  # comments: links to browser bugs
    return re.sub(r"url\(images/([\w.-]+\.png)\)", inline, css)


@dataclass(frozen=True)
class RunInfo:
    job: str
    run_id: str
    generated: str  # UTC
    output_dir: Path
    scene: str | None


def _header(info: RunInfo) -> str:
    items = [
        ("job", info.job),
        ("run", info.run_id),
        ("written", info.generated),
        ("geoseg", __version__),
        ("outputs", str(info.output_dir)),
    ]
    if info.scene:
        items.append(("scene", info.scene))
    fields = "".join(f'<div><dt>{k}</dt><dd id="run-{k}">{escape(v)}</dd></div>' for k, v in items)
    return f"<header><h1>geoseg report: {escape(info.job)}</h1><dl>{fields}</dl></header>"


def _map_section(content: MapContent) -> str:
    notes = "".join(f'<li class="note">{escape(note)}</li>' for note in content.notes)
    if content.bounds is None:
        body = '<p class="note">Nothing to map: this run left no mosaic and no vectors.</p>'
    else:
        body = '<div id="map"></div>'
    return f'<section id="map-section"><h2>Map</h2>{body}<ul>{notes}</ul></section>'


def _accuracy_section(metrics: RunMetrics | None) -> str:
    if metrics is None:
        return (
            '<section id="accuracy"><h2>Accuracy</h2><p class="note">No metrics.json in the output folder: '
            "this run had no evaluate stage (run <code>geoseg evaluate</code> for the scores).</p></section>"
        )
    blocks = [metrics.model] + ([metrics.colour_baseline] if metrics.colour_baseline else [])
    parts = [
        f'<section id="accuracy"><h2>Accuracy</h2><p class="note">From metrics.json, written {metrics.written}.</p>',
        "<h3>Overall</h3>",
        summary_table(blocks),
    ]
    for block in blocks:
        parts += [f"<h3>Per class: {escape(block.title)}</h3>", per_class_table(block)]
    parts += [
        '<p class="note">Recall is the class accuracy metrics.json stores; precision is derived from '
        "the confusion matrix's columns. Classes absent from both reference and prediction show –.</p>",
        "<h3>Confusion matrix (pixels): model</h3>",
        confusion_table(metrics.model),
    ]
    if metrics.instances is not None:
        parts.append("<h3>Instances</h3>")
        if metrics.instances.skipped:
            parts.append(f'<p class="note">Instance metrics skipped: {escape(metrics.instances.skipped)}</p>')
        else:
            parts.append(instances_table(metrics.instances))
    return "".join(parts) + "</section>"


def _training_section(history: TrainingHistory | None) -> str:
    if history is None:
        return ""
    stopped = " Training stopped early." if history.stopped_early else ""
    return (
        f'<section id="training"><h2>Training</h2>{training_svg(history)}'
        f'<p class="note">From {escape(history.file)}.{stopped}</p>{epochs_table(history)}</section>'
    )


def _quicklook_section(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<section id="quicklook"><h2>Quicklook</h2><figure><img alt="scene, truth and prediction" '
        f'src="data:image/png;base64,{data}"><figcaption class="note">{escape(path.name)}: scene, reference and '
        "prediction side by side (decimated).</figcaption></figure></section>"
    )


def _history(paths: JobPaths, metrics: RunMetrics | None) -> TrainingHistory | None:
    if metrics is not None and metrics.training is not None:
        return metrics.training
    if paths.training_history.exists():
        return read_history(paths.training_history, str(paths.training_history.relative_to(paths.root)))
    return None


def render_report(
    info: RunInfo,
    metrics: RunMetrics | None,
    history: TrainingHistory | None,
    content: MapContent,
    extras: ReportExtras,
    quicklook: Path,
) -> str:
    impact = ""
    if extras.impact is not None:
        impact = f'<section id="impact"><h2>Impact per zone</h2>{impact_table(extras.impact)}</section>'
    title = escape(f"geoseg report: {info.job}, run {info.run_id}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        f"<script>{_asset('guard.js')}</script><title>{title}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_leaflet_css()}</style><style>{_asset('report.css')}</style></head><body>"
        f"{_header(info)}<main>{_map_section(content)}{_accuracy_section(metrics)}{impact}"
        f"{_training_section(history)}{_quicklook_section(quicklook)}</main>"
        f'<script type="application/json" id="geoseg-map-data">{map_json(content)}</script>'
        f"<script>{_asset('leaflet.js')}</script><script>{_asset('report.js')}</script></body></html>\n"
    )


def write_report(
    job: Job,
    run_id: str,
    *,
    extras: ReportExtras | None = None,
    max_side: int = MAX_SIDE,
    max_features: int = MAX_FEATURES,
) -> Path:
    """Write ``report.html`` beside ``metrics.json`` from what the run left in ``output_dir``; return its path.

    Args:
        job: the job that ran.
        run_id: its run id (``runs/<run id>/run.json``).
        extras: what a later stage adds (per-zone table, flood extent, buildings); by default the impact
            stage's outputs, where the run has them (:func:`geoseg.report.impact_view.impact_extras`).
        max_side: pixels a side of the map's images.
        max_features: the most polygons drawn on the map (the largest; the page says how many were left out).
    """
    paths = JobPaths.of(job)
    if extras is None:  # what the run's impact stage left, if it ran
        extras = impact_extras(paths, max_side, max_features) or ReportExtras()
    metrics = read_metrics(paths.metrics) if paths.metrics.exists() else None
    scene = metrics.scene if metrics is not None else None
    info = RunInfo(
        job=job.name,
        run_id=run_id,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        output_dir=paths.root,
        scene=", ".join(scene) if isinstance(scene, list) else scene,
    )
    content = run_map(paths, job.classes, extras=extras, max_side=max_side, max_features=max_features)
    page = render_report(info, metrics, _history(paths, metrics), content, extras, paths.quicklook)
    out = report_path(job)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
