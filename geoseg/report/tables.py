"""The page's tables: every number formatted one way, and tagged with where it was read from.

A number cell carries ``data-key`` (the JSON pointer of the value in the file its table names in
``data-file``) and ``data-value`` (the value exactly as JSON), so a reader, or a test, can check
the page against ``metrics.json`` number by number. Numbers the page derives (precision, from the
confusion matrix) say so with ``data-derived`` instead of a key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from html import escape

from geoseg.report.content import (
    ImpactTable,
    InstanceScores,
    Number,
    Scores,
    TrainingHistory,
    json_pointer,
)

__all__ = [
    "confusion_table",
    "epochs_table",
    "format_number",
    "impact_table",
    "instances_table",
    "per_class_table",
    "summary_table",
]

_LABELS = {
    "pixel_accuracy": "pixel accuracy",
    "mean_accuracy": "mean class accuracy",
    "mean_iou": "mean IoU (mIoU)",
    "frequency_weighted_iou": "frequency-weighted IoU",
    "pixels": "pixels scored",
}


def format_number(value: Number) -> str:
    """The one format of the page: integers whole with thousands commas, other numbers to 4 decimals, – for none."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}"


def _cell(value: Number, key: str | None = None, derived: str | None = None) -> str:
    tags = f' data-key="{escape(key)}"' if key is not None else ""
    if derived is not None:
        tags += f' data-derived="{escape(derived)}"'
    return f'<td class="num"{tags} data-value="{escape(json.dumps(value))}">{format_number(value)}</td>'


def _table(file: str, head: Iterable[str], rows: Iterable[str], css: str) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    head_row = f"<thead><tr>{header}</tr></thead>"
    return f'<table class="{css}" data-file="{escape(file)}">{head_row}<tbody>{body}</tbody></table>'


def summary_table(blocks: list[Scores], file: str = "metrics.json") -> str:
    """One row per overall score, one column per block (the model, and the colour baseline beside it)."""
    rows = [
        f"<th>{escape(_LABELS[name])}</th>"
        + "".join(_cell(block.summary(name), f"{block.key}{json_pointer(name)}") for block in blocks)
        for name in Scores.SUMMARY
    ]
    return _table(file, ["", *(block.title for block in blocks)], rows, "summary")


def per_class_table(block: Scores, file: str = "metrics.json") -> str:
    """IoU, F1, recall (the class accuracy of the file) and precision (derived) per class."""
    precision = block.precision()
    rows = []
    for name in block.class_names:
        cells = [
            _cell(block.per_class_iou.get(name), f"{block.key}{json_pointer('per_class_iou', name)}"),
            _cell(block.per_class_f1.get(name), f"{block.key}{json_pointer('per_class_f1', name)}"),
            _cell(block.per_class_accuracy.get(name), f"{block.key}{json_pointer('per_class_accuracy', name)}"),
            _cell(precision.get(name), derived=f"{block.key}{json_pointer('precision', name)}"),
        ]
        rows.append(f"<th>{escape(name)}</th>" + "".join(cells))
    head = ["class", "IoU", "F1", "recall (class accuracy)", "precision"]
    return _table(file, head, rows, "per-class")


def confusion_table(block: Scores, file: str = "metrics.json") -> str:
    """Pixel counts: rows are the reference (truth), columns the prediction."""
    rows = [
        f"<th>{escape(name)}</th>"
        + "".join(
            _cell(count, f"{block.key}{json_pointer('confusion_matrix', i, j)}") for j, count in enumerate(counts)
        )
        for i, (name, counts) in enumerate(zip(block.class_names, block.confusion_matrix, strict=True))
    ]
    return _table(file, ["truth \\ predicted", *block.class_names], rows, "confusion")


_INSTANCE_LABELS = {
    "count_pred": "instances predicted",
    "count_truth": "instances in the reference",
    "tp": "matched (IoU ≥ 0.5, same class)",
    "fp": "false positives",
    "fn": "missed",
    "precision": "precision at IoU 0.5",
    "recall": "recall at IoU 0.5",
    "f1": "F1 at IoU 0.5",
    "mean_iou": "mean IoU of the matches",
    "splits": "reference objects split",
    "duplicates": "duplicate predictions",
    "merged": "predictions merging neighbours",
    "ap": "mask AP (COCO, IoU 0.5:0.95)",
    "ap50": "mask AP50",
    "ap75": "mask AP75",
}


def instances_table(scores: InstanceScores, file: str = "metrics.json") -> str:
    rows = [
        f"<th>{escape(_INSTANCE_LABELS.get(name, name))}</th>{_cell(value, f'{scores.key}{json_pointer(name)}')}"
        for name, value in scores.values
    ]
    return _table(file, ["instances", "value"], rows, "instances")


def epochs_table(history: TrainingHistory) -> str:
    rows = []
    for index, epoch in enumerate(history.epochs):
        at = f"{history.key}{json_pointer('epochs', index)}"
        best = " (best)" if epoch.epoch == history.best_epoch else ""
        rows.append(
            f"<th>{epoch.epoch}{best}</th>"
            + _cell(epoch.loss, f"{at}{json_pointer('loss')}")
            + _cell(epoch.validation, f"{at}{json_pointer(history.validation_key)}")
        )
    return _table(history.file, ["epoch", "training loss", f"validation {history.validation_name}"], rows, "epochs")


def impact_table(impact: ImpactTable) -> str:
    """The impact stage's per-zone totals, as given (with keys where it names the file they come from)."""
    rows = []
    for r, row in enumerate(impact.rows):
        keys = row.keys or tuple(f"{impact.key}{json_pointer(r, 'values', c)}" for c in range(len(row.values)))
        cells = "".join(_cell(value, key if impact.file else None) for value, key in zip(row.values, keys, strict=True))
        rows.append(f"<th>{escape(row.zone)}</th>{cells}")
    return _table(impact.file, ["zone", *impact.columns], rows, "impact")
