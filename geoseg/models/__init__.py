"""Model registry over segmentation-models-pytorch."""

from geoseg.models.registry import ARCHITECTURES, build_model, output_stride

__all__ = ["ARCHITECTURES", "build_model", "output_stride"]
