"""Instance models: torchvision's Mask R-CNN, sized for aerial tiles.

Two recipes, both from torchvision's own classes (never re-typed) and random
weights (nothing is downloaded):

- ``maskrcnn_resnet50_fpn``: torchvision's ``maskrcnn_resnet50_fpn`` as it is
  (256-channel FPN, default anchors and heads). Its state-dict keys are
  torchvision's, so COCO weights exported to safetensors load into it
  (``model.weights``) when the job has three bands. For a GPU.
- ``maskrcnn_resnet18_fpn``: a ResNet-18 backbone with a 128-channel FPN, a
  lighter mask head (4 × 128 convolutions) and box head (2 × 512), anchors
  from 16 to 256 px (buildings in 0.3–1 m imagery are 10–150 px), and fewer
  RPN proposals while training. About 2.3× faster per training step than the
  ResNet-50 recipe on a CPU, so it trains in minutes there.

Both use trainable BatchNorm (torchvision freezes it only for pretrained
backbones, which a random start is not). Two changes to torchvision's
defaults hold for both:

- geoseg normalises bands itself (the model card's per-band statistics), so
  the built-in ImageNet normalisation is replaced by the identity;
- images are never resized: a tile is predicted at its native resolution, so
  masks land on the scene's pixel grid and training crops and prediction
  tiles see objects at the same scale.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from geoseg.errors import ModelError

__all__ = ["INSTANCE_ARCHITECTURES", "NativeResolutionTransform", "build_instance_model", "is_instance_arch"]

INSTANCE_ARCHITECTURES = {
    "maskrcnn_resnet18_fpn": "torchvision.MaskRCNN(resnet18-FPN)",
    "maskrcnn_resnet50_fpn": "torchvision.maskrcnn_resnet50_fpn",
}
# Detections kept per tile: a 512-px tile of a dense town holds well over torchvision's default 100 buildings.
DETECTIONS_PER_TILE = 300
STRIDE = 32  # the FPN's coarsest level; tiles are padded to a multiple of it


class NativeResolutionTransform(GeneralizedRCNNTransform):
    """torchvision's batching transform without the resize and with identity normalisation."""

    def __init__(self, bands: int):
        super().__init__(
            min_size=1, max_size=1, image_mean=[0.0] * bands, image_std=[1.0] * bands, size_divisible=STRIDE
        )

    def resize(self, image, target=None):
        return image, target


def is_instance_arch(arch: str) -> bool:
    return arch in INSTANCE_ARCHITECTURES


def _resnet18_fpn(in_channels: int, num_classes: int) -> MaskRCNN:
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    channels = 128
    backbone = BackboneWithFPN(
        body,
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        [64, 128, 256, 512],
        channels,
        extra_blocks=LastLevelMaxPool(),
    )
    sizes = ((16,), (32,), (64,), (128,), (256,))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=500,
        box_batch_size_per_image=128,
        box_detections_per_img=DETECTIONS_PER_TILE,
        box_head=TwoMLPHead(channels * 7 * 7, 512),
        box_predictor=FastRCNNPredictor(512, num_classes),
        mask_head=MaskRCNNHeads(channels, (channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
    )
    return model


def _resnet50_fpn(in_channels: int, num_classes: int) -> MaskRCNN:
    # Without weights torchvision trains every backbone layer, with ordinary BatchNorm.
    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, box_detections_per_img=DETECTIONS_PER_TILE
    )


def build_instance_model(arch: str, *, in_channels: int, num_classes: int, options: dict | None = None) -> MaskRCNN:
    """A randomly initialised Mask R-CNN taking ``in_channels`` bands, ``num_classes`` classes (with background).

    In training mode it takes ``(images, targets)`` and returns torchvision's
    loss dict; in eval mode it returns one dict per image with ``boxes``,
    ``labels``, ``scores`` and ``masks`` (N, 1, H, W probabilities).
    """
    if options:
        raise ModelError(f"model.options: {arch} takes no options (got {', '.join(sorted(options))}); remove them")
    if num_classes < 2:
        raise ModelError(f"classes: {arch} needs the background and at least one object class (got {num_classes})")
    model = (_resnet18_fpn if arch == "maskrcnn_resnet18_fpn" else _resnet50_fpn)(in_channels, num_classes)
    model.transform = NativeResolutionTransform(in_channels)
    if in_channels != 3:
        old = model.backbone.body.conv1
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
        model.backbone.body.conv1 = conv
    model.output_stride = STRIDE
    return model
