"""A synthetic 4-band (R, G, B, near-infrared) 16-bit scene, built on the demo generator.

:func:`make_rgbn_scene` writes the demo scene of :func:`~geoseg.synthetic.scene.make_scene`
(same layout, colours and labels for the same seed), then turns its 8-bit RGB
into a ``uint16`` GeoTIFF with a fourth, near-infrared band, as a multispectral
aerial camera delivers it. The NIR band is derived from the rendered RGB with
a per-material NIR / visible ratio, so it follows everything the RGB already
has (illumination, shadows, texture) and adds what NIR is for:

* vegetation reflects NIR strongly (about 3× its visible brightness),
* water absorbs it (about a tenth),
* soil, roofs and roads sit in between, near their visible brightness.

Both the label polygons and the label raster are the demo's, unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp

from geoseg.synthetic.layout import DEMO_CLASSES
from geoseg.synthetic.scene import LABEL_NODATA, SceneFiles, make_scene

__all__ = ["NIR_RATIO", "RGBN_BANDS", "make_rgbn_scene"]

RGBN_BANDS = ("R", "G", "B", "NIR")

# NIR brightness as a multiple of the mean visible brightness, per class
# (the ratio vegetation indices are built on: high for leaves, near 0 for water).
NIR_RATIO = {"background": 1.1, "water": 0.12, "building": 1.0, "road": 0.95, "vegetation": 3.0}

# (offset, gain) from the renderer's ~0..255 radiance to digital numbers: a
# 12-bit camera stored in uint16, or the full 16-bit range. The 16-bit offset
# puts much of the data above 32767, where a signed reading would break.
_SCALES = {12: (60.0, 11.0), 16: (2000.0, 150.0)}
NODATA = 0


def _nir(rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float NIR (H, W) on the renderer's scale from float RGB (3, H, W) and class indices."""
    ratio = np.array([NIR_RATIO[name] for name in DEMO_CLASSES] + [0.0] * (256 - len(DEMO_CLASSES)), np.float32)
    # Leaves scatter NIR with a texture of their own (crowns, rows), not a copy of the visible one.
    texture = 1 + 0.05 * rng.standard_normal(labels.shape, dtype=np.float32)
    return ratio[labels] * rgb.mean(axis=0) * texture + 1.5 * rng.standard_normal(labels.shape, dtype=np.float32)


def make_rgbn_scene(
    out_dir: str | Path,
    *,
    size: int = 256,
    seed: int = 0,
    bit_depth: int = 16,
    nodata_collar: bool = True,
    **scene_options,
) -> SceneFiles:
    """Generate a small RGBN ``uint16`` scene with its labels.

    Writes into ``out_dir`` the same three files as
    :func:`~geoseg.synthetic.scene.make_scene`, but ``scene.tif`` is a tiled
    ``uint16`` GeoTIFF with 4 bands (colour interpretation red, green, blue,
    undefined; descriptions ``R, G, B, NIR``) and nodata 0: collar pixels are 0
    in every band, valid pixels are at least 1 in every band. The same
    arguments always give byte-identical files.

    Args:
        out_dir: folder for the files (created if missing).
        size: width and height in pixels (at least 64).
        seed: seed of the layout, colours and noise.
        bit_depth: 12 (values up to 4095) or 16 (values up to 65535).
        nodata_collar: blank a ragged band along one or two edges.
        **scene_options: ``crs``, ``pixel_size``, ``origin`` as for ``make_scene``.

    Returns:
        The paths of ``scene.tif``, ``labels.gpkg`` and ``labels.tif``.
    """
    if bit_depth not in _SCALES:
        raise ValueError(f"bit_depth must be 12 or 16 (got {bit_depth!r})")
    files = make_scene(Path(out_dir), size=size, seed=seed, nodata_collar=nodata_collar, **scene_options)
    with rasterio.open(files.scene) as src:
        rgb8, profile = src.read(), src.profile
    with rasterio.open(files.labels_tif) as lab:
        labels = lab.read(1)
    rng = np.random.default_rng([seed, 0x4E4952])  # "NIR": independent of the demo's own streams
    valid = labels != LABEL_NODATA
    # Undo the 8-bit quantisation with a uniform dither, so the 16-bit values are not multiples of the gain.
    rgb = rgb8.astype(np.float32) + rng.uniform(-0.5, 0.5, rgb8.shape).astype(np.float32)
    nir = _nir(rgb, np.where(valid, labels, 0), rng)
    offset, gain = _SCALES[bit_depth]
    top = (1 << bit_depth) - 1
    dn = np.clip(np.rint(offset + gain * np.concatenate([rgb, nir[None]])), 1, top).astype(np.uint16)
    dn[:, ~valid] = NODATA

    block = 128 if size <= 512 else 256  # several blocks even in a small test scene
    profile.update(
        count=4,
        dtype="uint16",
        nodata=NODATA,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
        predictor=2,
        photometric="RGB",
        alpha="UNSPECIFIED",
        interleave="pixel",
    )
    tmp = files.scene.with_name(f".{files.scene.stem}.rgbn.tmp{files.scene.suffix}")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(dn)
        # Explicit, so that no reader takes the fourth band for alpha (a mask, not a colour).
        dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)
        for band, name in enumerate(RGBN_BANDS, start=1):
            dst.set_band_description(band, name)
        dst.update_tags(bit_depth=str(bit_depth))
    os.replace(tmp, files.scene)
    return files
