"""``geoseg bench zoo``: every semantic architecture trained and scored the same way on one job's data.

For each architecture (default: every semantic one ``geoseg models`` lists) a job is derived from a
semantic job file (the demo's ``jobs/flood_survey.yaml``): the same classes, bands, training scenes,
labels, loss, schedule, seed and validation strip, the architecture's default backbone and options,
and one reduced training budget for all (``--epochs`` x ``--steps`` x ``--batch-size`` crops of the
job's crop size). Each runs its train, predict and evaluate stages through the real pipeline
(:func:`geoseg.job.run.run_job`, Ray included) at ``tiling: auto``: each model predicts at the
cheapest tiling whose seam disagreement, measured after its training on the validation strip, is
under ``tiling.max_seam_error``. ``--crf`` adds a row per named architecture predicted again with
the job's dense CRF (``predict.crf``, defaults) from the same weights (DeepLab v1/v2 + CRF).

The predicted scene is the job's ``predict.scene``, or its central ``--crop`` x ``--crop`` window
(written once as a GeoTIFF beside the rows), scored against the job's ``evaluate.labels``.

A row per architecture, appended to ``zoo.jsonl`` in the output folder as soon as it is measured,
so the zoo can be run piecewise: a row already there for the same budget and scene is not run
again. ``zoo.md`` is the markdown table of every row so far. A row holds: mIoU on the scene,
parameters, train samples/s (the training loop's own rate over every epoch but the first, as
``bench train``), predict MPix/s (the predict stage's wall time, actor start-up included), the tiling
``auto`` chose with the share of labels the model card's measured seams give it on this scene (not
for a CRF row: the CRF's own reach across a seam is not measured), the run's wall seconds, and
``other_cpu_share`` (timings are only valid near 0).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import rasterio
import yaml
from rasterio.windows import Window

from geoseg.errors import JobConfigError
from geoseg.models.known import ARCHITECTURE_NAMES, is_instance_arch

__all__ = ["SEMANTIC_ARCHITECTURES", "ZooBudget", "ZooRow", "bench_zoo", "markdown_table"]

SEMANTIC_ARCHITECTURES = tuple(arch for arch in ARCHITECTURE_NAMES if not is_instance_arch(arch))
ROWS, TABLE = "zoo.jsonl", "zoo.md"


@dataclass(frozen=True)
class ZooBudget:
    """The training budget every architecture gets, and the scene it is scored on."""

    epochs: int = 2
    steps_per_epoch: int = 25
    batch_size: int = 4
    crop: int | None = 2048  # central window of predict.scene (None: the whole scene)

    @property
    def samples(self) -> int:
        return self.epochs * self.steps_per_epoch * self.batch_size


@dataclass(frozen=True)
class ZooRow:
    """One architecture's figures (see the module docstring)."""

    arch: str
    encoder: str
    crf: bool
    parameters: int
    miou: float
    train_samples_per_s: float
    predict_mpix_per_s: float
    tile_size: int
    halo: int
    seam_changed_percent: float | None
    seconds: float
    other_cpu_share: float
    budget: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.arch} + CRF" if self.crf else self.arch


def _absolute(value: str, base: Path) -> str:
    path = Path(value)
    return str(path if path.is_absolute() or "://" in value else (base / path).resolve())


def _source_job(job_file: Path) -> dict[str, Any]:
    """The job's YAML with every input path made absolute (the derived jobs live elsewhere)."""
    raw = yaml.safe_load(job_file.read_text())
    base = job_file.resolve().parent
    for scene in raw["train"]["scenes"]:
        scene["image"], scene["labels"] = _absolute(scene["image"], base), _absolute(scene["labels"], base)
    raw["predict"]["scene"] = _absolute(raw["predict"]["scene"], base)
    raw["evaluate"]["labels"] = _absolute(raw["evaluate"]["labels"], base)
    return raw


def write_crop(scene: Path, out: Path, size: int) -> Path:
    """The central ``size`` x ``size`` window of ``scene`` as a GeoTIFF (written once, by blocks of rows)."""
    path = out / f"{scene.stem}_crop{size}.tif"
    if path.exists():
        return path
    with rasterio.open(scene) as src:
        if min(src.height, src.width) < size:
            raise JobConfigError(
                f"{scene}: bench zoo --crop {size} is larger than the scene ({src.width} x {src.height} px)"
            )
        window = Window((src.width - size) // 2, (src.height - size) // 2, size, size)
        profile = src.profile | {
            "height": size, "width": size, "transform": src.window_transform(window),
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        }  # fmt: skip
        partial = path.with_suffix(".partial.tif")
        with rasterio.open(partial, "w", **profile) as dst:
            for row in range(0, size, 256):
                rows = min(256, size - row)
                band_window = Window(window.col_off, window.row_off + row, size, rows)
                dst.write(src.read(window=band_window, masked=False), window=Window(0, row, size, rows))
    partial.rename(path)
    return path


def derived_job(source: dict[str, Any], arch: str, out: Path, budget: ZooBudget, scene: str, crf: bool) -> dict:
    """The job of one row: the source job's data and training settings, this architecture, the budget."""
    train = dict(source["train"]) | {
        "epochs": budget.epochs,
        "steps_per_epoch": budget.steps_per_epoch,
        "batch_size": budget.batch_size,
        "early_stopping": None,
    }
    predict: dict[str, Any] = {"scene": scene, "batch_size": 1}
    if crf:
        predict["crf"] = {}
    job = {
        "name": f"zoo_{arch}",
        "output_dir": str(out / arch),
        "classes": source["classes"],
        "stages": ["train", "predict", "evaluate"],
        "model": {"arch": arch},
        "tiling": "auto",
        "train": train,
        "predict": predict,
        "evaluate": {"labels": source["evaluate"]["labels"], "colour_baseline": False},
    }
    for key in ("bands", "runtime"):  # the source's band choice and Ray resources, as they are
        if key in source:
            job[key] = source[key]
    return job


def _train_rate(history: dict) -> float:
    """Samples/s over every epoch but the first (which pays for warm-up), or the only one."""
    epochs = history["epochs"]
    timed = epochs[1:] or epochs
    samples = sum(e["samples_per_s"] * e["seconds"] for e in timed)
    return round(samples / sum(e["seconds"] for e in timed), 3)


def seam_figure(checkpoint: Path, tile: int, halo: int, scene: tuple[int, int]) -> float | None:
    """The share of labels (%) the card's measured seams give tiles of ``tile``/``halo`` on a (height, width) scene.

    None where the card measured no seams or not this halo.
    """
    from geoseg.infer.seams import tiling_figure
    from geoseg.models.checkpoint import read_card

    seams = read_card(checkpoint).seams
    edge = next((e for e in seams.edges if e.halo == halo), None) if seams else None
    return None if edge is None else float(tiling_figure(edge, tile, scene).changed_percent)


def _scene_shape(path: str | Path) -> tuple[int, int]:
    with rasterio.open(path) as scene:
        return scene.height, scene.width


def _most_exact_tiling(folder: Path, job_path: Path, shape: tuple[int, int]) -> dict | None:
    """Where ``tiling: auto`` finds no tiling under its error for this trained model: the most exact one that fits.

    None when the model is not trained yet, has no seams, or auto has a tiling for it.
    """
    from geoseg.job import load_job
    from geoseg.models.checkpoint import read_card
    from geoseg.stages.tiling_choice import candidate_tilings, most_exact

    if not (folder / "checkpoint" / "model_card.json").exists() or not job_path.exists():
        return None
    card = read_card(folder / "checkpoint")
    if card.seams is None:
        return None
    loaded = load_job(job_path)
    closest = most_exact(candidate_tilings(loaded, card, shape)[0])
    if closest is None or closest.changed_percent < loaded.tiling.max_seam_error:
        return None
    return {"tile_size": closest.tile_size, "halo": closest.halo}


def _parameters(card: dict) -> int:
    from geoseg.models.registry import build_model

    model = build_model(
        card["arch"], in_channels=len(card["bands"]), num_classes=len(card["classes"]),
        encoder=card["encoder"], **card["options"],
    )  # fmt: skip
    return sum(p.numel() for p in model.parameters())


def _measure_row(
    job_file: Path, arch: str, crf: bool, budget: ZooBudget, shape: tuple[int, int], log: Callable[[str], None]
) -> ZooRow:
    """Run one row's job and read its figures; ``shape``: the predicted scene's (height, width)."""
    from geoseg.bench.measure import MemorySampler
    from geoseg.job.run import run_job
    from geoseg.models import resolve_encoder

    stages = ["predict", "evaluate"] if crf else None  # the CRF row predicts again from the same weights
    started = time.perf_counter()
    with MemorySampler(interval=2.0, pss_every=60.0) as memory:
        summary = run_job(job_file, stages=stages, log=lambda line: log(f"  {line}"))
    seconds = time.perf_counter() - started
    folder = job_file.parent
    card = json.loads((folder / "checkpoint" / "model_card.json").read_text())
    history = json.loads((folder / "train" / "history.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    predict = summary["predict"]
    tile, halo = int(predict["tile_size"]), int(predict["halo"])
    return ZooRow(
        arch=arch,
        encoder=resolve_encoder(arch, card["encoder"]),  # the job default means the paper's backbone
        crf=crf,
        parameters=_parameters(card),
        miou=round(float(metrics["model"]["mean_iou"]), 4),
        train_samples_per_s=_train_rate(history),
        predict_mpix_per_s=float(predict["mpix_per_s"]),
        tile_size=tile,
        halo=halo,
        # Measured on the model's own labels: the CRF's context across a seam is not in the card's figures.
        seam_changed_percent=None if crf else seam_figure(folder / "checkpoint", tile, halo, shape),
        seconds=round(seconds, 1),
        other_cpu_share=round(memory.other_cpu_share, 3),
        budget=asdict(budget),
    )


def _done(out: Path, budget: ZooBudget) -> dict[tuple[str, bool], ZooRow]:
    rows: dict[tuple[str, bool], ZooRow] = {}
    if (out / ROWS).exists():
        for line in (out / ROWS).read_text().splitlines():
            row = ZooRow(**json.loads(line))
            if row.budget == asdict(budget):
                rows[(row.arch, row.crf)] = row
    return rows


def markdown_table(rows: Iterable[ZooRow]) -> str:
    """The comparison table, best mIoU first."""
    lines = [
        "| architecture | backbone | parameters | mIoU | train samples/s | predict MPix/s "
        "| tiling (tile/halo) | seams: labels changed | other_cpu_share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: -r.miou):
        seams = "n/a" if row.seam_changed_percent is None else f"{row.seam_changed_percent:.4f}%"
        lines.append(
            f"| {row.name} | {row.encoder} | {row.parameters / 1e6:.2f} M | {row.miou:.3f} "
            f"| {row.train_samples_per_s:.2f} | {row.predict_mpix_per_s:.3f} | {row.tile_size}/{row.halo} "
            f"| {seams} | {row.other_cpu_share:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _check_archs(archs: list[str], crf_archs: list[str]) -> None:
    unknown = [a for a in archs + crf_archs if a not in SEMANTIC_ARCHITECTURES]
    if unknown:
        raise JobConfigError(
            f"bench zoo: unknown semantic architecture(s) {', '.join(unknown)}; choose from "
            f"{', '.join(SEMANTIC_ARCHITECTURES)}"
        )
    missing = [a for a in crf_archs if a not in archs]
    if missing:
        raise JobConfigError(f"bench zoo --crf {','.join(missing)}: also name it in --archs (its weights are reused)")


def bench_zoo(
    job_file: str | Path,
    out: str | Path,
    *,
    archs: list[str] | None = None,
    crf_archs: list[str] | None = None,
    budget: ZooBudget = ZooBudget(),
    log: Callable[[str], None] = print,
) -> list[ZooRow]:
    """Train, predict and score each architecture under ``budget``; return every row in ``out``."""
    archs, crf_archs = list(archs or SEMANTIC_ARCHITECTURES), list(crf_archs or [])
    _check_archs(archs, crf_archs)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = _source_job(Path(job_file))
    scene = source["predict"]["scene"]
    if budget.crop:
        scene = str(write_crop(Path(scene), out, budget.crop))
    shape = _scene_shape(scene)
    done = _done(out, budget)
    if done:
        (out / TABLE).write_text(markdown_table(done.values()))
    for arch, crf in [(a, crf) for a in archs for crf in (False, True) if not crf or a in crf_archs]:
        if (arch, crf) in done:
            continue
        log(f"bench zoo: {arch}{' + CRF' if crf else ''}: {budget.samples} training crops, predict {Path(scene).name}")
        folder = out / arch
        folder.mkdir(exist_ok=True)
        job_path = folder / ("job_crf.yaml" if crf else "job.yaml")
        job = derived_job(source, arch, out, budget, scene, crf)
        if (fixed := _most_exact_tiling(folder, job_path, shape)) is not None:
            job["tiling"] = fixed  # auto refused this model before: none fits under max_seam_error
        job_path.write_text(yaml.safe_dump(job, sort_keys=False))
        try:
            row = _measure_row(job_path, arch, crf, budget, shape, log)
        except JobConfigError as exc:
            fixed = _most_exact_tiling(folder, job_path, shape) if "tiling.max_seam_error" in str(exc) else None
            if fixed is None:
                raise
            log(f"bench zoo: {arch}: {exc}; predicting at the most exact tiling that fits instead")
            job["tiling"] = fixed
            job_path.write_text(yaml.safe_dump(job, sort_keys=False))
            row = _measure_row(job_path, arch, crf, budget, shape, log)
        with (out / ROWS).open("a") as rows:
            rows.write(json.dumps(asdict(row)) + "\n")
        done[(arch, crf)] = row
        log(f"bench zoo: {row.name}: mIoU {row.miou:.3f}, {row.train_samples_per_s} samples/s, "
            f"{row.predict_mpix_per_s} MPix/s at {row.tile_size}/{row.halo}")  # fmt: skip
        (out / TABLE).write_text(markdown_table(done.values()))
    return list(done.values())
