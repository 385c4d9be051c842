"""Training curves as inline SVG: loss on the left axis, the validation score (0 to 1) on the right.

Drawn here rather than by a chart library: a page that works from disk cannot load one at view
time, and two polylines with their axes are a few dozen lines of markup.
"""

from __future__ import annotations

import math
from html import escape

from geoseg.report.content import TrainingHistory

__all__ = ["training_svg"]

WIDTH, HEIGHT = 680, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 64, 30, 42  # margins: room for tick labels and axis titles
LOSS, VALIDATION = "#c0392b", "#1f5fbf"


def _nice_top(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``value``: round axis ends."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def _polyline(points: list[tuple[float, float]], colour: str, marker: str) -> str:
    if not points:
        return ""
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>'
        if marker == "circle"
        else f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{colour}"/>'
        for x, y in points
    )
    return f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>{dots}'


def _axes(loss_top: float, first: int, last: int, x_of) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>']
    for i in range(6):  # five intervals on both value axes
        y = TOP + plot_h * (1 - i / 5)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{loss_top * i / 5:.3g}</text>')
        parts.append(f'<text x="{WIDTH - RIGHT + 6}" y="{y + 4:.1f}">{i / 5:.1f}</text>')
    stride = max(1, math.ceil((last - first + 1) / 12))  # at most a dozen epoch labels
    for epoch in range(first, last + 1, stride):
        x = x_of(epoch)
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{epoch}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">epoch</text>')
    return "".join(parts)


def training_svg(history: TrainingHistory) -> str:
    """The loss and validation curves of ``history``; an empty string when it has no epochs."""
    epochs = history.epochs
    if not epochs:
        return ""
    first, last = min(e.epoch for e in epochs), max(e.epoch for e in epochs)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    losses = [e.loss for e in epochs if e.loss is not None]
    loss_top = _nice_top(max(losses, default=1.0))

    def x_of(epoch: int) -> float:
        return LEFT + (plot_w * (epoch - first) / (last - first) if last > first else plot_w / 2)

    def y_of(value: float, top: float) -> float:
        return TOP + plot_h * (1 - value / top)

    loss_points = [(x_of(e.epoch), y_of(e.loss, loss_top)) for e in epochs if e.loss is not None]
    val_points = [(x_of(e.epoch), y_of(e.validation, 1.0)) for e in epochs if e.validation is not None]
    best = ""
    if history.best_epoch is not None:
        x = x_of(history.best_epoch)
        best = (
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#555" stroke-dasharray="4 3"/>'
            f'<text x="{x - 4:.1f}" y="{TOP + 12}" text-anchor="end">best</text>'
        )
    name = escape(history.validation_name)
    return (
        f'<svg class="curves" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="training loss and validation {name} per epoch">'
        f"{_axes(loss_top, first, last, x_of)}{best}"
        f"{_polyline(loss_points, LOSS, 'circle')}{_polyline(val_points, VALIDATION, 'square')}"
        f'<text x="{LEFT}" y="{TOP - 10}" fill="{LOSS}" style="fill:{LOSS}">● training loss (left axis)</text>'
        f'<text x="{WIDTH - RIGHT}" y="{TOP - 10}" text-anchor="end" style="fill:{VALIDATION}">'
        f"■ validation {name} (right axis, held-out strip)</text></svg>"
    )
