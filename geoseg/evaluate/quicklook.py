"""A quicklook PNG: scene, truth and prediction side by side, decimated by reads."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from rasterio.enums import Resampling

from geoseg.config.locations import RemotePath
from geoseg.io.mosaic import MosaicInfo

__all__ = ["class_colours", "write_quicklook"]

_NAMED = {
    "background": "#d8cfb8",
    "water": "#1f5fbf",
    "building": "#d62728",
    "road": "#7f7f7f",
    "vegetation": "#2ca02c",
}


def class_colours(class_names) -> list[str]:
    palette = plt.get_cmap("tab10")  # 10 listed colours: palette(k) is the k-th, as RGBA
    return [_NAMED.get(name, matplotlib.colors.to_hex(palette(i % 10))) for i, name in enumerate(class_names)]


def _decimated_mosaic(mosaic: MosaicInfo, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``step``-th pixel of labels and validity, read one row of chunks at a time."""
    rows = []
    for row in range(0, mosaic.height, mosaic.chunk):
        first = (-row) % step  # keep the global sampling grid across chunk rows
        stop = min(row + mosaic.chunk, mosaic.height)
        rows.append((mosaic.labels[row + first : stop : step, ::step], mosaic.valid[row + first : stop : step, ::step]))
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def write_quicklook(
    scene_path: Path | RemotePath,
    bands: list[int],
    truth_path: Path | None,
    mosaic: MosaicInfo,
    out_path: Path,
    *,
    max_side: int = 1024,
) -> Path:
    step = max(1, int(np.ceil(max(mosaic.height, mosaic.width) / max_side)))
    labels, valid = _decimated_mosaic(mosaic, step)
    shape = labels.shape
    with rasterio.open(scene_path) as src:
        rgb = src.read(bands[:3], out_shape=(min(3, len(bands)), *shape), resampling=Resampling.nearest)
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    low, high = np.percentile(rgb[valid > 0], [1, 99]) if valid.any() else (0, 1)
    rgb = np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)
    panels = [("scene", rgb)]
    colours = ListedColormap(class_colours(mosaic.class_names))
    n = len(mosaic.class_names)
    if truth_path is not None:
        with rasterio.open(truth_path) as src:
            truth = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        panels.append(("truth", np.ma.masked_where(truth >= n, truth)))
    panels.append(("prediction", np.ma.masked_where(valid == 0, labels)))

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.6), dpi=110)
    for ax, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
        if image.ndim == 3:
            ax.imshow(image, interpolation="nearest")
        else:
            ax.imshow(image, cmap=colours, vmin=-0.5, vmax=n - 0.5, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    handles = [
        Patch(color=c, label=name)
        for name, c in zip(mosaic.class_names, class_colours(mosaic.class_names), strict=True)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path
