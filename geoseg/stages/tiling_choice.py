"""Seams measured after training, a tiling chosen by them at prediction (``tiling: auto``).

The train stage measures, on the first held-out validation strip, how far crop-mode tiles
differ from whole-image prediction for a few halos (:mod:`geoseg.infer.seams`) and writes the
figures per candidate tiling into the model card. The predict stage, with ``tiling: auto``,
takes the cheapest tiling whose share of changed labels is under ``tiling.max_seam_error``
and whose batch fits ``tiling.max_tile_memory_gb``, and says which it took and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from geoseg.config import Job
from geoseg.errors import JobConfigError
from geoseg.infer.seams import choose_tiling, max_tile_for_memory, tiling_figure, tiling_figures
from geoseg.models.card import ModelCard, SeamCheck, TilingFigure
from geoseg.stages.sections import predict_spec, train_spec
from geoseg.train.plan import TrainingPlan

__all__ = ["MEASURED_REGION", "chosen_tiling", "measured_seams", "record_seams"]

MEASURED_REGION = (1024, 2048)  # rows, columns of the validation strip measured at most (4 tiles of 512 across)


def record_seams(job: Job, plan: TrainingPlan, checkpoint: Path, log: Callable[[str], None]) -> SeamCheck | None:
    """Measure the trained model's seams on the first validation strip and write them into its card."""
    if plan.instance_model or not train_spec(job).measure_seams:
        return None
    scenes = [(i, scene) for i, scene in enumerate(plan.scenes) if scene.val_area is not None]
    if not scenes:
        return None
    import numpy as np
    import rasterio
    import torch
    from rasterio.windows import Window

    from geoseg.infer.seams import seam_check
    from geoseg.io.normalization import normalize
    from geoseg.models.checkpoint import load_checkpoint, write_card
    from geoseg.models.context import EXACT_TILING, safe_halo

    index, scene = scenes[0]
    col, row, width, height = scene.val_area  # type: ignore[misc]  # filtered above
    window = Window(col, row, min(width, MEASURED_REGION[1]), min(height, MEASURED_REGION[0]))
    device = torch.device("cuda" if job.runtime.use_gpu and torch.cuda.is_available() else "cpu")
    model, card = load_checkpoint(checkpoint, device)
    with rasterio.open(scene.image) as src:
        pixels = src.read(list(card.bands), window=window)
    image = np.ascontiguousarray(normalize(pixels, card.normalization.mean, card.normalization.std))
    # An exact architecture's radius (a halo that changes nothing) is measured too: the most exact candidate.
    radius = (
        safe_halo(card.arch, encoder=card.encoder, options=dict(card.options), in_channels=card.in_channels)
        if card.arch in EXACT_TILING
        else None
    )
    region = (
        f"train.scenes[{index}] validation strip, {int(window.width)} x {int(window.height)} px "
        f"at column {col}, row {row}"
    )
    seams = seam_check(model, image, region=region, stride=plan.stride, exact_radius=radius, device=device)
    write_card(checkpoint, card.model_copy(update={"seams": seams}))
    log(_summary(seams, job))
    return seams


def _summary(seams: SeamCheck, job: Job) -> str:
    """One line: the usual 512/32 and the cheapest tiling under the job's limits (one tile a batch)."""
    usual = next((f for f in seams.tilings if (f.tile_size, f.halo) == (512, 32)), None)
    limit = job.tiling.max_seam_error
    max_tile = max_tile_for_memory(job.tiling.max_tile_memory_gb, 1, seams.activation_bytes_per_pixel)
    best = choose_tiling(seams.tilings, max_error_percent=limit, max_tile=max_tile)
    figures = ([_figure(usual)] if usual else []) + ([f"cheapest under {limit:g}%: {_figure(best)}"] if best else [])
    return f"train: seams measured on {seams.region}: " + ("; ".join(figures) or "no candidate tiling")


def _figure(figure: TilingFigure) -> str:
    return (
        f"tile {figure.tile_size} / halo {figure.halo} ({figure.changed_percent:.4f}% changed, "
        f"{figure.cost:.2f}x pixels)"
    )


def chosen_tiling(
    job: Job, card: ModelCard, checkpoint: Path, scene: tuple[int, int], log: Callable[[str], None]
) -> Job:
    """``job`` with ``tiling: auto`` replaced by the tiling the card's seams say is cheapest on this scene.

    Cheapest on *this* scene (height, width): the model's pixels count the tiles past its edges, so a
    core that divides the scene can beat a larger one that overhangs it.
    """
    if not job.tiling.auto:
        return job
    figure = _choice(job, card, checkpoint, scene)
    region = card.seams.region if card.seams else ""
    log(
        f"predict: tiling auto: {_figure(figure)} on this scene, the cheapest under {job.tiling.max_seam_error:g}% "
        f"of labels changed against whole-image prediction (seams measured on {region})"
    )
    tiling = job.tiling.model_copy(update={"tile_size": figure.tile_size, "halo": figure.halo})
    return job.model_copy(update={"tiling": tiling})


def measured_seams(card: ModelCard, tile: int, halo: int, scene: tuple[int, int]) -> str | None:
    """The card's measured share of changed labels for this tiling on this scene, as a line (None: not measured)."""
    edge = next((e for e in card.seams.edges if e.halo == halo), None) if card.seams else None
    if edge is None or card.seams is None or tile - 2 * halo <= 0:
        return None
    figure = tiling_figure(edge, tile, scene)
    return (
        f"predict: seams: {_figure(figure)} on this scene: labels changed against whole-image prediction, "
        f"by the seams measured on {card.seams.region}"
    )


def candidate_tilings(job: Job, card: ModelCard, scene: tuple[int, int]) -> tuple[list[TilingFigure], int]:
    """Every tiling the card's seams give figures for on this scene, and the largest tile that fits a worker."""
    assert card.seams is not None
    seams = card.seams
    batch = predict_spec(job).batch_size
    max_tile = max_tile_for_memory(job.tiling.max_tile_memory_gb, batch, seams.activation_bytes_per_pixel)
    sizes = range(seams.stride * math.ceil(128 / seams.stride), max_tile + 1, seams.stride)
    return tiling_figures(seams.edges, seams.stride, sizes, scene), max_tile


def most_exact(figures: list[TilingFigure]) -> TilingFigure | None:
    """The tiling that changes the fewest labels, the cheaper of equals; None for no figures."""
    return min(figures, key=lambda f: (f.changed_percent, f.cost), default=None)


def _choice(job: Job, card: ModelCard, checkpoint: Path, scene: tuple[int, int]) -> TilingFigure:
    if card.seams is None:
        raise JobConfigError(
            f"tiling: auto chooses by the seams the train stage measures, and the model in {checkpoint} has none; "
            "retrain it, or give tiling.tile_size and tiling.halo"
        )
    batch = predict_spec(job).batch_size
    figures, max_tile = candidate_tilings(job, card, scene)
    figure = choose_tiling(figures, max_error_percent=job.tiling.max_seam_error, max_tile=max_tile)
    if figure is None:
        closest = most_exact(figures)
        best = f"; the most exact that fits is {_figure(closest)}" if closest else ""
        raise JobConfigError(
            f"tiling.max_seam_error: no tiling of the model in {checkpoint} changes under "
            f"{job.tiling.max_seam_error:g}% of labels with tiles up to {max_tile} px (batch {batch} in "
            f"max_tile_memory_gb {job.tiling.max_tile_memory_gb:g}){best}; raise max_seam_error or "
            "max_tile_memory_gb, or give tiling.tile_size and tiling.halo"
        )
    return figure
