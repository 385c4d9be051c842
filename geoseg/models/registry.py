"""One registry, one signature: ``build_model(arch, *, in_channels, num_classes, **options)``.

Architectures come from segmentation-models-pytorch (smp) and torchvision,
never re-typed here, and are built with random weights: nothing is
downloaded at run time (smp ``encoder_weights=None``; torchvision
``weights=None, weights_backbone=None``). Pretrained encoder weights are
loaded into such a model from the libraries' caches or a local file by
:mod:`geoseg.models.pretrained`, so a checkpoint's model is rebuilt here alike. Every model returns a plain logits
tensor (N, classes, H, W) the size of its input, for any tile side that is a
multiple of :func:`output_stride`.

Options are checked, and bad combinations refused with one line naming the
field and the fix: smp silently ignores unknown
keyword arguments for its own encoders, and some of its heads return logits of
another size than the input (FPN with ``encoder_depth`` < 5, PSPNet with
``encoder_depth`` != 3, any changed ``upsampling``).

torchvision's ``fcn_resnet50`` and ``deeplabv3_resnet50`` are fixed recipes: a
dilated resnet50 (output stride 8), no options, no ``aux_loss``. Their
``encoder`` is fixed too. ``"resnet50"`` names it; the registry default
``"resnet18"`` is accepted and means "the architecture's default backbone",
because job files and model cards always carry an encoder (the job default is
resnet18) and must round-trip through ``build_model_from_card``. Any other
encoder is refused. :func:`resolve_encoder` says what is actually built.
The wrappers subclass torchvision's FCN/DeepLabV3, so their state-dict keys are
torchvision's own (``backbone.conv1.weight``, ``classifier.4.bias``): weights
exported from torchvision load as they are (without an ``aux_classifier``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
from torchvision.models.segmentation import FCN, DeepLabV3, deeplabv3_resnet50, fcn_resnet50

from geoseg.errors import ModelError
from geoseg.models.classic import CLASSIC_ARCHITECTURES, build_classic, classic_encoder
from geoseg.models.instance import INSTANCE_ARCHITECTURES, build_instance_model, is_instance_arch
from geoseg.tiling import check_tile_size

__all__ = [
    "ARCHITECTURES",
    "CLASSIC_ARCHITECTURES",
    "DEFAULT_ENCODER",
    "SEGMENTATION_ARCHITECTURES",
    "SMP_ARCHITECTURES",
    "TORCHVISION_ARCHITECTURES",
    "TORCHVISION_BACKBONE",
    "DeepLabV3Logits",
    "FCNLogits",
    "ModelInfo",
    "build_model",
    "is_instance_arch",
    "model_info",
    "output_stride",
    "resolve_encoder",
    "smallest_tile",
]


class FCNLogits(FCN):
    """torchvision's FCN returning the logits tensor instead of ``{"out": logits}``."""

    # conv1, the max pool and layer2 stride by 2; layer3/layer4 dilate instead (replace_stride_with_dilation).
    output_stride = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)["out"]


class DeepLabV3Logits(DeepLabV3):
    """torchvision's DeepLabV3 returning the logits tensor instead of ``{"out": logits}``."""

    output_stride = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)["out"]


# geoseg name → segmentation-models-pytorch architecture name
SMP_ARCHITECTURES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}
# geoseg name → (torchvision.models.segmentation builder, its class returning plain logits)
_TORCHVISION: dict[str, tuple[Callable[..., FCN | DeepLabV3], type[FCNLogits | DeepLabV3Logits]]] = {
    "fcn_resnet50": (fcn_resnet50, FCNLogits),
    "deeplabv3_resnet50": (deeplabv3_resnet50, DeepLabV3Logits),
}
# geoseg name → torchvision builder name
TORCHVISION_ARCHITECTURES = {name: builder.__name__ for name, (builder, _) in _TORCHVISION.items()}
# Every architecture → where it comes from (what `geoseg models` lists)
# Semantic models (logits per pixel; what tiling, seams and `halo: auto` are about)
SEGMENTATION_ARCHITECTURES = {
    **{name: f"smp.{cls}" for name, cls in SMP_ARCHITECTURES.items()},
    **{name: f"torchvision.{fn}" for name, fn in TORCHVISION_ARCHITECTURES.items()},
    **CLASSIC_ARCHITECTURES,  # written here from the papers (geoseg.models.classic)
}
ARCHITECTURES = {**SEGMENTATION_ARCHITECTURES, **INSTANCE_ARCHITECTURES}

DEFAULT_ENCODER = "resnet18"
TORCHVISION_BACKBONE = "resnet50"
# Set by build_model itself; in options they would conflict or be ignored.
_RESERVED = {"encoder_name": "model.encoder", "in_channels": "the job's bands", "classes": "the job's classes"}
# Options geoseg refuses (checked below), so not offered as accepted ones.
_REFUSED = ("encoder_weights", "activation", "aux_params", "kwargs")


@dataclass(frozen=True)
class ModelInfo:
    """What `geoseg models` shows about one architecture."""

    arch: str
    encoder: str
    parameters: int
    stride: int
    smallest_tile: int


def _check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ModelError(f"model.arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def _check_sizes(in_channels: int, num_classes: int) -> None:
    for field, value in (("bands", in_channels), ("classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(
                f"{field}: the model needs at least one (got {value!r} as its "
                f"{'in_channels' if field == 'bands' else 'num_classes'})"
            )


def resolve_encoder(arch: str, encoder: str = DEFAULT_ENCODER) -> str:
    """The backbone ``build_model(arch, encoder=encoder)`` builds.

    That is ``encoder`` itself for smp, torchvision's fixed resnet50 for its architectures (which accept only
    "resnet50" and the default).
    """
    _check_arch(arch)
    if arch in SMP_ARCHITECTURES:
        return encoder
    if arch in CLASSIC_ARCHITECTURES:
        return classic_encoder(arch, encoder)
    backbone = "resnet18" if arch == "maskrcnn_resnet18_fpn" else TORCHVISION_BACKBONE
    if encoder not in (DEFAULT_ENCODER, backbone):
        other = (
            "or use maskrcnn_resnet18_fpn / maskrcnn_resnet50_fpn"
            if is_instance_arch(arch)
            else "or use an smp architecture (deeplabv3, fpn, ...)"
        )
        raise ModelError(
            f"model.encoder: {arch} has a fixed {backbone} backbone (got {encoder!r}); "
            f"remove model.encoder or set it to {backbone!r}, {other} for encoder {encoder!r}"
        )
    return backbone


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _head_scale(arch: str, depth: int, options: dict) -> int | None:
    """The final upsampling smp's head needs for logits the size of the input.

    For smp 0.6 and encoders that halve the resolution at each stage; None where the head has no ``upsampling``.
    """
    if arch == "fpn":  # the pyramid's finest level is stage depth-3 (1/4 for depth 5)
        return 2 ** (depth - 3)
    if arch == "pspnet":  # pools the deepest stage, then upsamples straight to the input
        return 2**depth
    if arch == "deeplabv3":  # its default (None) computes exactly this
        return min(2**depth, options.get("encoder_output_stride", 8))
    if arch in ("deeplabv3plus", "pan", "segformer", "upernet"):  # decoders end at the 1/4 features
        return 4
    return None


def _check_smp_options(arch: str, encoder: str, options: dict) -> dict:
    """Refuse options smp would ignore, or that would make the model return anything but logits."""
    options = dict(options)
    if "encoder_weights" in options and options.pop("encoder_weights") is not None:
        raise ModelError(
            "model.options.encoder_weights: pretrained encoders are named in model.encoder_weights "
            "(e.g. imagenet, read from the library's cache); move it there"
        )
    params = inspect.signature(getattr(smp, SMP_ARCHITECTURES[arch])).parameters
    for name in options:
        if name in _RESERVED:
            raise ModelError(f"model.options.{name}: set by geoseg; use {_RESERVED[name]} instead")
        # smp hands unknown names to the encoder, and only timm ("tu-") encoders use them.
        if name not in params and not encoder.startswith("tu-"):
            close = difflib.get_close_matches(name, params, n=1)
            known = [p for p in params if p not in _RESERVED and p not in _REFUSED]
            raise ModelError(
                f"model.options.{name}: not an option of {arch}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (accepted: {', '.join(known)})"
            )
    if options.get("activation") is not None:
        raise ModelError(
            f"model.options.activation: geoseg's losses and argmax take raw logits; remove activation "
            f"(got {options['activation']!r})"
        )
    if options.get("aux_params") is not None:
        raise ModelError(
            "model.options.aux_params: the classification head makes the model return (mask, label) "
            "tuples; geoseg trains segmentation logits only, remove aux_params"
        )
    depth = options.get("encoder_depth", params["encoder_depth"].default)
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ModelError(
            f"model.options.encoder_depth: must be a whole number of encoder stages, 1 to 5 (got {depth!r})"
        )
    default_channels = params["decoder_channels"].default if "decoder_channels" in params else None
    channels = options.get("decoder_channels")
    if isinstance(default_channels, tuple) and 1 <= depth <= len(default_channels):
        if isinstance(channels, (list, tuple)) and len(channels) != depth:
            raise ModelError(
                f"model.options.decoder_channels: {arch} needs one entry per encoder stage, {depth} "
                f"for encoder_depth {depth} (got {len(channels)}); use e.g. "
                f"{list(default_channels[-depth:])} or encoder_depth {len(channels)}"
            )
        if channels is None and depth != len(default_channels):
            raise ModelError(
                f"model.options.decoder_channels: {arch} with encoder_depth {depth} needs {depth} "
                f"decoder channels; add decoder_channels: {list(default_channels[-depth:])}"
            )
    return options


def _check_head_scale(arch: str, options: dict) -> None:
    """Refuse heads whose fixed upsampling does not bring the logits back to the input's size."""
    params = inspect.signature(getattr(smp, SMP_ARCHITECTURES[arch])).parameters
    depth = options.get("encoder_depth", params["encoder_depth"].default)
    need = _head_scale(arch, depth, options)
    upsampling = options.get("upsampling", params["upsampling"].default if "upsampling" in params else None)
    if need is None or upsampling is None or upsampling == need:
        return
    size = f"{upsampling / need:g}×" if upsampling > need else f"1/{need / upsampling:g} of"
    size += " the input's side"
    if "upsampling" in options:
        default = params["upsampling"].default
        raise ModelError(
            f"model.options.upsampling: {arch} with encoder_depth {depth} needs upsampling {need} "
            f"(got {upsampling}: logits {size}); use upsampling: {need}"
            + (" or leave it out" if default in (None, need) else "")
        )
    raise ModelError(
        f"model.options.encoder_depth: {arch} with encoder_depth {depth} returns logits {size} (its "
        f"head upsamples {upsampling}×, the features need {need}×); use encoder_depth: "
        f"{params['encoder_depth'].default}, or add upsampling: {need}"
    )


def _build_smp(arch: str, in_channels: int, num_classes: int, encoder: str, options: dict) -> torch.nn.Module:
    options = _check_smp_options(arch, encoder, options)
    try:
        model = smp.create_model(
            SMP_ARCHITECTURES[arch],
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            **options,
        )
    except KeyError:  # smp's message lists all ~150 encoders
        close = difflib.get_close_matches(encoder, smp.encoders.get_encoder_names(), n=3)
        raise ModelError(
            f"model.encoder: unknown encoder {encoder!r} for {arch}"
            + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
            + " (smp.encoders.get_encoder_names() lists them; 'tu-<name>' takes a timm model)"
        ) from None
    except RuntimeError as exc:
        if encoder.startswith("tu-") and "unknown model" in str(exc).lower():
            raise ModelError(
                f"model.encoder: timm has no model {encoder[3:]!r} ({_one_line(exc)}); timm.list_models() lists them"
            ) from None
        raise
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"model.options: {arch} with encoder {encoder!r} refuses them: {_one_line(exc)}") from None
    _check_head_scale(arch, options)  # after smp's own checks (depth ranges), which say it better
    return model


def _build_torchvision(arch: str, in_channels: int, num_classes: int, encoder: str, options: dict) -> torch.nn.Module:
    resolve_encoder(arch, encoder)
    if options:
        raise ModelError(
            f"model.options: {arch} is torchvision's fixed recipe and takes no options (got "
            f"{', '.join(sorted(options))}); remove them, or use an smp architecture to tune one"
        )
    builder, logits_class = _TORCHVISION[arch]
    # aux_loss=False: an auxiliary head would add parameters that no loss reaches (DDP rejects those).
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    model = logits_class(model.backbone, model.classifier)
    if in_channels != 3:
        old = model.backbone.conv1
        conv = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
        model.backbone.conv1 = conv
    return model


def build_model(
    arch: str, *, in_channels: int, num_classes: int, encoder: str = DEFAULT_ENCODER, **options
) -> torch.nn.Module:
    """Build a randomly initialised segmentation model returning logits (N, classes, H, W).

    Args:
        arch: a name from :data:`ARCHITECTURES`.
        in_channels: input bands.
        num_classes: output classes (logit channels).
        encoder: smp encoder name; for torchvision architectures "resnet50" or the default (see the module doc).
        **options: the smp architecture's keyword arguments (``encoder_depth``, ``decoder_channels``, ...);
            none for torchvision architectures.

    Raises:
        ModelError: unknown architecture, encoder or option, or a combination whose logits would not
            match the input, in one line naming the field and the fix.
    """
    _check_arch(arch)
    _check_sizes(in_channels, num_classes)
    if is_instance_arch(arch):
        resolve_encoder(arch, encoder)
        return build_instance_model(arch, in_channels=in_channels, num_classes=num_classes, options=options)
    if arch in TORCHVISION_ARCHITECTURES:
        return _build_torchvision(arch, in_channels, num_classes, encoder, options)
    if arch in CLASSIC_ARCHITECTURES:
        return build_classic(arch, in_channels, num_classes, encoder, options)
    return _build_smp(arch, in_channels, num_classes, encoder, options)


def output_stride(model: torch.nn.Module) -> int:
    """Tile sides (and halos) must be multiples of this.

    Usually the encoder's stride; PAN pools its deepest features 8× further
    (its FPA block), so it needs 8× that. torchvision's segmentation models and
    the classic ones have no ``encoder``: they declare it (``output_stride``).
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return int(getattr(model, "output_stride", 32))
    stride = int(getattr(encoder, "output_stride", 32))
    return stride * 8 if type(model).__name__ == "PAN" else stride


def smallest_tile(model: torch.nn.Module, *, arch: str = "model", in_channels: int = 3, strides: int = 8) -> int:
    """The smallest tile side that the tile plan accepts and the model turns into logits of the same size.

    The side is a multiple of the stride (see :func:`geoseg.tiling.check_tile_size`); the model runs in eval mode
    with a batch of one. Tries up to ``strides`` multiples, one small forward pass each.

    Training with a batch of one may need more: BatchNorm cannot normalise a single 1 × 1 value
    (smp's bottlenecks at one stride, torchvision DeepLabV3's image pooling at any size).
    """
    stride = output_stride(model)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        for side in range(stride, strides * stride + 1, stride):
            if check_tile_size(side, stride, arch) is not None:
                continue
            try:
                with torch.no_grad():
                    logits = model(torch.zeros(1, in_channels, side, side, dtype=param.dtype, device=param.device))
            except (RuntimeError, ValueError):  # e.g. a pooling layer left with less than one pixel
                continue
            if tuple(logits.shape[-2:]) == (side, side):
                return side
    finally:
        model.train(was_training)
    raise ModelError(f"model: {arch} returns no logits of its input's size for any tile up to {strides * stride} px")


def model_info(
    arch: str, *, encoder: str = DEFAULT_ENCODER, in_channels: int = 3, num_classes: int = 2, **options
) -> ModelInfo:
    """Build ``arch`` once (random weights) and describe it."""
    with torch.random.fork_rng(devices=[]):  # listing models must not move the caller's random stream
        model = build_model(arch, in_channels=in_channels, num_classes=num_classes, encoder=encoder, **options)
    # Mask R-CNN pads any tile to its stride and returns detections, not logits: no size to probe.
    smallest = (
        2 * output_stride(model) if is_instance_arch(arch) else smallest_tile(model, arch=arch, in_channels=in_channels)
    )
    return ModelInfo(
        arch=arch,
        encoder=resolve_encoder(arch, encoder),
        parameters=sum(p.numel() for p in model.parameters()),
        stride=output_stride(model),
        smallest_tile=smallest,
    )
