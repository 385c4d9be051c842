"""Pretrained encoders: weights the libraries name, read from their own caches, or a local file.

``model.encoder_weights`` names what the encoder starts from (where each library keeps them:
:mod:`geoseg.models.hub_cache`):

- for segmentation-models-pytorch's encoders, a name from smp's table (``imagenet``, ``ssl``, ...), from the
  Hugging Face cache;
- for timm's ``tu-`` encoders, ``timm``: the weights timm names for the model (and its tag), loaded by timm's
  own loader (its key mapping, first convolution and classifier handling);
- for torchvision's architectures (FCN, DeepLabV3, Mask R-CNN), ``imagenet`` (or a member of torchvision's
  ``ResNet50_Weights``/``ResNet18_Weights``): the ResNet backbone's file in torch hub's cache;
- or a local file: an encoder state dict as ``.safetensors``, or a torch file read with
  ``torch.load(weights_only=True)`` (never unpickled).

Nothing is downloaded while a job runs: a name whose file is not cached is refused in one line that says
which file, where it was looked for and how to get it (``geoseg weights fetch JOB`` on a connected machine:
:func:`fetch_encoder_weights`). The model itself is always built by :func:`geoseg.models.registry.build_model`
(random weights) and the encoder's weights are loaded into it, so a checkpoint's model is rebuilt exactly
without the pretrained file. A first convolution for other than three bands is adapted as smp does (one band:
the sum over RGB; more: RGB repeated and scaled by 3 / bands).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from safetensors import SafetensorError
from safetensors.torch import load_file

from geoseg.errors import ModelError, StageError
from geoseg.models.card import PretrainedEncoder
from geoseg.models.hub_cache import WeightsSource, cached_weights, weights_source
from geoseg.models.instance import is_instance_arch
from geoseg.models.registry import SMP_ARCHITECTURES, build_model

__all__ = [
    "build_pretrained_model",
    "encoder_module",
    "fetch_encoder_weights",
    "file_sha256",
    "load_encoder_state",
]

# Where a local file's encoder weights may sit: at the top, or inside a whole model's state dict.
_PREFIXES = ("", "encoder.", "backbone.body.", "backbone.", "module.encoder.", "module.", "model.")
_HEADS = ("fc.", "classifier.", "head.", "last_linear.")  # ImageNet classifiers, which an encoder drops


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "on", "yes", "true")


def fetch_encoder_weights(arch: str, encoder: str, weights: str) -> Path:
    """Download the named weights into the library's cache (unless there already); the cached file.

    Raises:
        ModelError: no such weights for this encoder.
        StageError: the download failed (no internet, HF_HUB_OFFLINE set, the server refused).
    """
    source = weights_source(arch, encoder, weights)
    found = cached_weights(source)
    if found is not None:
        return found
    where = source.repo_id if source.hub == "huggingface" else source.url
    try:
        if source.hub == "torch":
            if _offline():
                raise OSError("HF_HUB_OFFLINE is set")
            assert source.url is not None
            source.cache.mkdir(parents=True, exist_ok=True)
            # torchvision's file names carry the start of their sha256, which torch hub checks (as it does itself)
            hashed = torch.hub.HASH_REGEX.search(source.expected.name)
            torch.hub.download_url_to_file(source.url, str(source.expected), hashed.group(1) if hashed else None)
            return source.expected
        return _fetch_from_hf(source)
    except (OSError, HfHubHTTPError) as exc:
        fix = "unset HF_HUB_OFFLINE and run it" if _offline() else "run it"
        raise StageError(
            f"weights fetch: could not download {weights!r} weights of {source.encoder} from {where} "
            f"({' '.join(str(exc).split())[:200]}); {fix} on a machine with internet access"
        ) from exc


def _fetch_from_hf(source: WeightsSource) -> Path:
    assert source.repo_id is not None
    for filename in source.filenames:
        try:
            path = hf_hub_download(
                source.repo_id,
                filename,
                revision=source.revision,
                cache_dir=source.cache,
                local_files_only=_offline(),
            )
        except EntryNotFoundError:
            if filename == source.filenames[-1]:
                raise
            continue  # timm: no safetensors file in this repository, its torch file then
        if source.repo_id.startswith("smp-hub/"):  # smp reads config.json too: fetched, smp itself loads offline
            hf_hub_download(
                source.repo_id,
                "config.json",
                revision=source.revision,
                cache_dir=source.cache,
                local_files_only=_offline(),
            )
        return Path(path)
    raise AssertionError("unreachable: the last file name re-raises")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_module(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    """The part of a built model that pretrained encoder weights fill."""
    if arch in SMP_ARCHITECTURES:
        return model.get_submodule("encoder")
    if is_instance_arch(arch):
        return model.get_submodule("backbone.body")  # the ResNet under the FPN
    return model.get_submodule("backbone")  # torchvision's FCN / DeepLabV3: the dilated ResNet


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file (``weights_only``: tensors and containers only)."""
    state: object
    try:
        if path.suffix.lower() == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as exc:
        raise ModelError(
            f"{path}: model.encoder_weights: not a state dict geoseg can read ({' '.join(str(exc).split())[:160]}); "
            "save it with safetensors or torch.save(encoder.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model"):  # training checkpoints often wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: model.encoder_weights: holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _first_conv(pretrained: torch.Tensor, needed: torch.Size) -> torch.Tensor | None:
    """RGB filters for ``needed[1]`` bands, as smp's ``patch_first_conv`` makes them; None if not such a pair."""
    bands = needed[1]
    if pretrained.ndim != 4 or pretrained.shape[1] != 3 or pretrained.shape[0] != needed[0]:
        return None
    if pretrained.shape[2:] != needed[2:]:
        return None
    if bands == 1:
        return pretrained.sum(1, keepdim=True)
    return pretrained[:, [band % 3 for band in range(bands)]] * (3 / bands)


def load_encoder_state(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into an encoder ``module``: every one of its weights must be there (extra ones are ignored).

    The keys may carry a prefix (``encoder.`` of a whole smp model, ``backbone.`` of torchvision's, ...); a
    first convolution for three bands is adapted to the module's (see :func:`_first_conv`).
    """
    target = module.state_dict()
    needed = [key for key in target if not key.endswith("num_batches_tracked")]  # BatchNorm counts may be absent
    prefix = max(_PREFIXES, key=lambda p: sum(p + key in state for key in needed))
    missing = [key for key in needed if prefix + key not in state]
    if missing:
        raise ModelError(
            f"{source}: model.encoder_weights: lacks {len(missing)} of the encoder's {len(needed)} weights "
            f"(e.g. {prefix + missing[0]!r}); give a state dict of this encoder (model.encoder)"
        )
    # Weights the encoder has no place for mean another encoder (a resnet34's file holds a resnet18's keys and more),
    # but for a classifier's head, which ImageNet files keep.
    extra = [
        key
        for key in state
        if key.startswith(prefix) and key[len(prefix) :] not in target and not key[len(prefix) :].startswith(_HEADS)
    ]
    if extra:
        raise ModelError(
            f"{source}: model.encoder_weights: holds {len(extra)} weights the encoder does not have "
            f"(e.g. {extra[0]!r}); give a state dict of this encoder (model.encoder)"
        )
    loaded = {}
    for key, current in target.items():
        value = state.get(prefix + key)
        if value is None:  # a BatchNorm counter the file does not keep
            loaded[key] = current
            continue
        if value.shape != current.shape:
            adapted = _first_conv(value, current.shape)
            if adapted is None:
                raise ModelError(
                    f"{source}: model.encoder_weights: {prefix + key} has shape {list(value.shape)} where the "
                    f"encoder needs {list(current.shape)}; give weights of this encoder (model.encoder)"
                )
            value = adapted
        loaded[key] = value.to(current.dtype)
    module.load_state_dict(loaded)


def _weights_file(arch: str, encoder: str, weights: str | Path, job: str) -> Path:
    if isinstance(weights, Path):
        if not weights.is_file():
            raise ModelError(f"{weights}: model.encoder_weights: file not found; check the path (relative to the job)")
        return weights
    source = weights_source(arch, encoder, weights)
    found = cached_weights(source)
    if found is None:
        raise ModelError(source.missing_message(job))
    return found


def _timm_encoder_state(arch: str, encoder: str, file: Path, in_channels: int, num_classes: int, options: dict):
    """A timm encoder's weights as timm's own loader gives them (key mapping, first convolution, classifier)."""
    with torch.random.fork_rng(devices=[]):  # a second model, built only to read the weights through timm
        try:
            twin = smp.create_model(
                SMP_ARCHITECTURES[arch],
                encoder_name=encoder,
                encoder_weights=True,  # smp: any value loads pretrained timm weights
                in_channels=in_channels,
                classes=num_classes,
                pretrained_cfg_overlay={"file": str(file)},
                **options,
            )
        except (RuntimeError, KeyError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:160]
            raise ModelError(f"{file}: model.encoder_weights: timm cannot load it into {encoder} ({reason})") from None
    return twin.encoder.state_dict()


def build_pretrained_model(
    arch: str,
    *,
    in_channels: int,
    num_classes: int,
    encoder: str,
    encoder_weights: str | Path,
    seed: int | None = None,
    job: str = "JOB",
    **options,
) -> tuple[torch.nn.Module, PretrainedEncoder]:
    """:func:`~geoseg.models.registry.build_model`, then the encoder's pretrained weights loaded into it.

    Args:
        arch: as for :func:`~geoseg.models.registry.build_model`.
        in_channels: input bands.
        num_classes: output classes.
        encoder: the encoder (smp) or the default/fixed backbone (torchvision).
        encoder_weights: a name the library knows for this encoder (see the module doc), or a local file (a Path).
        seed: seeds the random layers (decoder, heads) as the training loop does for a model without pretrained
            weights, without moving the caller's random stream; None: drawn from the caller's stream.
        job: the job file, for the message that says how to fetch missing weights.
        **options: the architecture's options, as for ``build_model``.

    Returns:
        The model and the record of its weights for the model card.

    Raises:
        ModelError: unknown weights, a file not cached (one line: which, where, how to fetch it), a file that
            does not fit the encoder.
    """
    file = _weights_file(arch, encoder, encoder_weights, job)
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        model = build_model(arch, in_channels=in_channels, num_classes=num_classes, encoder=encoder, **options)
    if arch in SMP_ARCHITECTURES and encoder.startswith("tu-"):
        model.get_submodule("encoder").load_state_dict(
            _timm_encoder_state(arch, encoder, file, in_channels, num_classes, options)
        )
    else:
        load_encoder_state(encoder_module(model, arch), _read_state_dict(file), source=str(file))
    return model, PretrainedEncoder(weights=str(encoder_weights), file=str(file), sha256=file_sha256(file))
