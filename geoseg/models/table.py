"""``geoseg models``: every architecture with its source, size, stride, smallest tile, halo and tiling."""

from __future__ import annotations

__all__ = ["architecture_table"]


def architecture_table(encoder: str) -> list[str]:
    """The table's lines, header first; ``encoder`` sizes the smp architectures (torchvision's are fixed).

    Sized for 3 bands and 2 classes. halo: the pre-measured safe halo (`halo: auto` measures
    others); tiling: "exact" when crop mode with that halo equals whole-image prediction,
    "blend" when no halo can (global context, or a resampling grid that moves with the tile).
    Raises the first ModelError when no smp architecture takes ``encoder`` (a bad argument).
    """
    from geoseg.errors import ModelError
    from geoseg.models import ARCHITECTURES, is_instance_arch, model_info, resolve_encoder
    from geoseg.models.context import KNOWN_HALOS, exact_tiling
    from geoseg.models.registry import SMP_ARCHITECTURES

    try:  # an encoder smp does not know is refused before the ~30 builds of the table
        model_info("unet", encoder=encoder)
    except ModelError as exc:
        if str(exc).startswith("model.encoder: unknown encoder"):
            raise
    rows, refused = [], []
    for arch, source in ARCHITECTURES.items():
        name = encoder if arch in SMP_ARCHITECTURES else resolve_encoder(arch)
        try:
            info = model_info(arch, encoder=name)
        except ModelError as exc:
            refused.append(exc)
            rows.append(f"{arch:<21} {source:<35} {name:<14} not available: {exc}")
            continue
        known = arch in KNOWN_HALOS and info.encoder == resolve_encoder(arch)
        halo = str(KNOWN_HALOS[arch]) if known else "-"
        tiling = "instances" if is_instance_arch(arch) else "exact (crop)" if exact_tiling(arch) else "blend"
        rows.append(
            f"{arch:<21} {source:<35} {info.encoder:<14} {info.parameters:>12,} {info.stride:>6} "
            f"{info.smallest_tile:>13} {halo:>5}  {tiling}"
        )
    if len(refused) >= len(SMP_ARCHITECTURES):
        raise refused[0]
    header = (
        f"{'arch':<21} {'source':<35} {'encoder':<14} {'parameters':>12} {'stride':>6} {'smallest tile':>13} "
        f"{'halo':>5}  tiling"
    )
    return [header, *rows]
