"""Model registry over segmentation-models-pytorch and torchvision."""

from geoseg.models.registry import (ARCHITECTURES, DEFAULT_ENCODER, ModelInfo, build_model, model_info, output_stride,
                                    resolve_encoder, smallest_tile)
from geoseg.models.instance import is_instance_arch

__all__ = ["ARCHITECTURES", "DEFAULT_ENCODER", "ModelInfo", "build_model", "model_info", "output_stride",
           "resolve_encoder", "smallest_tile", "is_instance_arch"]
