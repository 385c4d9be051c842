"""Where each stage writes, under the job's ``output_dir``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geoseg.config import Job

__all__ = ["JobPaths"]


@dataclass(frozen=True)
class JobPaths:
    root: Path

    @classmethod
    def of(cls, job: Job) -> JobPaths:
        return cls(Path(job.output_dir))

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    def train_labels(self, index: int) -> Path:
        return self.train_dir / f"labels_{index}.tif"

    def train_instances(self, index: int) -> Path:
        return self.train_dir / f"instances_{index}.tif"

    @property
    def training_history(self) -> Path:
        return self.train_dir / "history.json"

    @property
    def training_plot(self) -> Path:
        return self.train_dir / "history.png"

    @property
    def ray_storage(self) -> Path:
        return self.train_dir / "ray"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def mosaic(self) -> Path:
        return self.root / "mosaic.zarr"

    @property
    def instance_table(self) -> Path:
        """One row per id of ``mosaic.zarr/instances`` (see :mod:`geoseg.io.instances`)."""
        return self.root / "instances.parquet"

    @property
    def tile_detections(self) -> Path:
        """Instance models: each tile's raw detections before the cross-tile merge (one .npz per tile)."""
        return self.root / "detections"

    @property
    def vectors(self) -> Path:
        return self.root / "vectors"

    @property
    def impact(self) -> Path:
        """The impact stage's outputs (:mod:`geoseg.impact.outputs`)."""
        return self.root / "impact"

    @property
    def pre_event(self) -> Path:
        """The impact stage's prediction of the pre-event scene: ``pre_event/mosaic.zarr``."""
        return self.root / "pre_event"

    @property
    def truth(self) -> Path:
        return self.root / "evaluate" / "truth.tif"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def quicklook(self) -> Path:
        return self.root / "quicklook.png"

    @property
    def runs(self) -> Path:
        """One folder per ``geoseg run`` (``runs/<run id>/run.json``) and ``runs/latest.json``."""
        return self.root / "runs"
