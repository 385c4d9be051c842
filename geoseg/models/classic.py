"""The classic segmentation systems, written from their papers: one table for the registry.

Each module below cites its paper and says where it departs from it:

- :mod:`geoseg.models.vgg_fcn`: ``fcn32s``, ``fcn16s``, ``fcn8s`` (Long et al. 2015), ``parsenet``
  (Liu et al. 2015), ``deeplabv1`` (Chen et al. 2015, LargeFOV) on a VGG-16 body;
- :mod:`geoseg.models.segnet`: ``segnet`` (Badrinarayanan et al. 2017), ``deconvnet`` (Noh et al. 2015);
- :mod:`geoseg.models.fcdensenet`: ``fcdensenet56/67/103`` (Jégou et al. 2017, "Tiramisu");
- :mod:`geoseg.models.deeplabv2`: ``deeplabv2`` (Chen et al. 2018, ASPP-L on a dilated ResNet);
- :mod:`geoseg.models.fastfcn`: ``fastfcn`` (Wu et al. 2019, Joint Pyramid Upsampling);
- :mod:`geoseg.models.gatedscnn`: ``gatedscnn`` (Takikawa et al. 2019, shape stream + edge output).

Backbones. The VGG and FC-DenseNet systems have a fixed one (:data:`FIXED_BACKBONES`). The ResNet
systems take ``model.encoder`` from :data:`ENCODER_CHOICES`; as for torchvision's
fixed recipes, the registry default ``"resnet18"`` means "the architecture's default backbone"
wherever the paper's backbone is another, so that a job naming only ``arch`` builds the paper's model.

Options are each class's keyword arguments; unknown names are refused in one line with the accepted
ones, and the classes refuse bad values themselves (:class:`~geoseg.errors.ModelError`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch import nn

# Module by module, not through the package: geoseg.models' lazy names lead back to the registry, which imports this.
import geoseg.models.deeplabv2 as deeplabv2
import geoseg.models.fastfcn as fastfcn
import geoseg.models.fcdensenet as fcdensenet
import geoseg.models.gatedscnn as gatedscnn
import geoseg.models.segnet as segnet
import geoseg.models.vgg_fcn as vgg_fcn
from geoseg.errors import ModelError
from geoseg.models.known import DEFAULT_BACKBONES

__all__ = [
    "CLASSIC_ARCHITECTURES",
    "CLASSIC_CONTEXT",
    "ENCODER_CHOICES",
    "FIXED_BACKBONES",
    "build_classic",
    "classic_encoder",
]

_MODULES = (vgg_fcn, segnet, fcdensenet, deeplabv2, fastfcn, gatedscnn)
_BUILDERS: dict[str, Callable[..., nn.Module]] = {name: b for m in _MODULES for name, b in m.BUILDERS.items()}
# Registry name → what is built (what `geoseg models` lists as the source).
CLASSIC_ARCHITECTURES = {name: m.__name__ for m in _MODULES for name in m.BUILDERS}
# Registry name → what lets it see the whole input, or None where its context is local.
CLASSIC_CONTEXT: dict[str, str | None] = {name: c for m in _MODULES for name, c in m.CONTEXT.items()}

ENCODER_CHOICES: dict[str, tuple[str, ...]] = {
    "deeplabv2": tuple(deeplabv2.ENCODERS),
    "fastfcn": tuple(fastfcn.ENCODERS),
    "gatedscnn": tuple(gatedscnn.ENCODERS),
}
FIXED_BACKBONES = {name: DEFAULT_BACKBONES[name] for name in _BUILDERS if name not in ENCODER_CHOICES}
_DEFAULT = "resnet18"  # geoseg.models.registry.DEFAULT_ENCODER (not imported: the registry imports this module)


def classic_encoder(arch: str, encoder: str = _DEFAULT) -> str:
    """The backbone ``build_classic(arch, encoder=encoder)`` builds; a one-line ModelError for one it cannot."""
    if arch in FIXED_BACKBONES:
        fixed = FIXED_BACKBONES[arch]
        if encoder not in (_DEFAULT, fixed):
            raise ModelError(
                f"model.encoder: {arch} has a fixed {fixed} backbone (got {encoder!r}); remove model.encoder "
                f"or use an smp architecture (unet, deeplabv3plus, ...) for encoder {encoder!r}"
            )
        return fixed
    choices, paper = ENCODER_CHOICES[arch], DEFAULT_BACKBONES[arch]
    if encoder == _DEFAULT:
        return paper
    if encoder not in choices:
        raise ModelError(
            f"model.encoder: {arch} takes one of {', '.join(choices)} (got {encoder!r}); "
            f"remove model.encoder for the paper's {paper}"
        )
    return encoder


def _accepted(arch: str) -> list[str]:
    builder = _BUILDERS[arch]
    # A functools.partial (fcdensenet56/67/103: the paper's growth rate and layers) takes its own keywords too.
    target = getattr(builder, "func", builder)
    params = inspect.signature(target).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "encoder"]


def build_classic(arch: str, in_channels: int, num_classes: int, encoder: str, options: dict) -> nn.Module:
    """Build ``arch`` with random weights; refuse unknown options in one line naming the accepted ones."""
    accepted = _accepted(arch)
    for name in options:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=1)
            raise ModelError(
                f"model.options.{name}: not an option of {arch}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (accepted: {', '.join(accepted) or 'none'})"
            )
    backbone = classic_encoder(arch, encoder)
    if arch in ENCODER_CHOICES:
        options = {**options, "encoder": backbone}
    try:
        return _BUILDERS[arch](in_channels=in_channels, num_classes=num_classes, **options)
    except ModelError:
        raise  # the class's own one line, naming the option
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model.options: {arch} refuses them: {' '.join(str(exc).split())}") from None
