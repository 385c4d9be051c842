"""Models: the registry over segmentation-models-pytorch and torchvision, the model card, checkpoints.

- :mod:`geoseg.models.registry`: ``build_model(arch, *, in_channels, num_classes, **options)``.
- :mod:`geoseg.models.card`: :class:`ModelCard`, the typed, versioned ``model_card.json``.
- :mod:`geoseg.models.checkpoint`: safetensors weights + card: save, read, load, publish.
- :mod:`geoseg.models.context`: receptive fields, safe halos, exact or blended tiling.
- :mod:`geoseg.models.instance`: Mask R-CNN models.
- :mod:`geoseg.models.known`: the output strides of common models, known without building them.

The names are loaded lazily (as in :mod:`geoseg.runtime`): the card and the known strides are read
without torch, so that ``geoseg validate`` answers in a second.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geoseg.models.card import CARD_FORMAT, ModelCard
    from geoseg.models.instance import is_instance_arch
    from geoseg.models.registry import (
        ARCHITECTURES,
        DEFAULT_ENCODER,
        ModelInfo,
        build_model,
        model_info,
        output_stride,
        resolve_encoder,
        smallest_tile,
    )

__all__ = [
    "ARCHITECTURES",
    "CARD_FORMAT",
    "DEFAULT_ENCODER",
    "ModelCard",
    "ModelInfo",
    "build_model",
    "is_instance_arch",
    "model_info",
    "output_stride",
    "resolve_encoder",
    "smallest_tile",
]

_HOMES = {
    "CARD_FORMAT": "card",
    "ModelCard": "card",
    "is_instance_arch": "instance",
    "ARCHITECTURES": "registry",
    "DEFAULT_ENCODER": "registry",
    "ModelInfo": "registry",
    "build_model": "registry",
    "model_info": "registry",
    "output_stride": "registry",
    "resolve_encoder": "registry",
    "smallest_tile": "registry",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"geoseg.models.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'geoseg.models' has no attribute {name!r}")
