"""Models: the registry over segmentation-models-pytorch and torchvision, the model card, checkpoints.

- :mod:`geoseg.models.registry`: ``build_model(arch, *, in_channels, num_classes, **options)``.
- :mod:`geoseg.models.card`: :class:`ModelCard`, the typed, versioned ``model_card.json``.
- :mod:`geoseg.models.checkpoint`: safetensors weights + card: save, read, load, publish.
- :mod:`geoseg.models.context`: receptive fields, safe halos, exact or blended tiling.
- :mod:`geoseg.models.instance`: Mask R-CNN models.
"""

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
