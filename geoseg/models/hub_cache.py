"""Where the libraries keep an encoder's named pretrained weights, found without torch and without the network.

``geoseg validate`` checks that a job's ``model.encoder_weights`` are cached before anything runs, and must
answer in about a second, so this module imports neither torch nor segmentation-models-pytorch for smp's own
encoders:

- smp 0.5+ keeps its encoders' weights on the Hugging Face hub, repository ``smp-hub/<encoder>.<name>`` at a
  revision pinned in its encoder table. That table is read here from smp's installed source files as literal
  data (``ast``), never executed; ``tests/models/test_pretrained.py`` compares it with smp's own, entry by entry.
  The file is then ``$HF_HOME/hub/models--smp-hub--resnet18.imagenet/snapshots/<revision>/model.safetensors``.
- timm's ``tu-`` encoders (``timm``: the weights timm names for the model and its tag) and torchvision's
  backbones (``imagenet``: ``$TORCH_HOME/hub/checkpoints/resnet50-0676ba61.pth``) ask timm or torchvision,
  which import torch: rarer jobs pay for it.

The cache folders are read from the environment when looked up (huggingface_hub reads its variables once, at
import), so a test or a user who sets ``HF_HOME``/``TORCH_HOME`` is heard.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from geoseg.errors import ModelError

__all__ = [
    "FIXED_BACKBONES",
    "TIMM_WEIGHTS",
    "WeightsSource",
    "cached_weights",
    "hf_hub_cache",
    "smp_pretrained_settings",
    "torch_hub_checkpoints",
    "weights_source",
]

TIMM_WEIGHTS = "timm"  # what `tu-` encoders take: timm picks the weights from the model name (and its tag)
# torchvision's architectures and their fixed ResNet backbones (geoseg.models.registry.resolve_encoder; tested).
FIXED_BACKBONES = {
    "fcn_resnet50": "resnet50",
    "deeplabv3_resnet50": "resnet50",
    "maskrcnn_resnet18_fpn": "resnet18",
    "maskrcnn_resnet50_fpn": "resnet50",
}
_TORCHVISION_NAMES = {"imagenet": "IMAGENET1K_V1"}  # what torchvision's builders take for weights_backbone


@dataclass(frozen=True)
class WeightsSource:
    """Where a library keeps an encoder's named weights.

    Attributes:
        encoder: the encoder or backbone the weights are for.
        weights: the name the job gives.
        hub: ``huggingface`` (smp, timm) or ``torch`` (torch hub's cache: torchvision, old timm models).
        cache: the cache folder, as the environment says now (HF_HUB_CACHE / HF_HOME, TORCH_HOME).
        expected: the file that must be there.
        repo_id, revision, filenames: the Hugging Face repository, its revision, the file names tried in order.
        url: torch hub's download address (its last part names the cached file).
    """

    encoder: str
    weights: str
    hub: Literal["huggingface", "torch"]
    cache: Path
    expected: Path
    repo_id: str | None = None
    revision: str | None = None
    filenames: tuple[str, ...] = ()
    url: str | None = None

    def missing_message(self, job: str) -> str:
        """One line: which file is missing, where it was looked for, how to get it onto this machine."""
        if self.hub == "huggingface":
            where, copy = "the Hugging Face cache", f"copy its Hugging Face cache folder to {self.cache} here"
            other = "or set HF_HUB_CACHE to the copied folder"
        else:
            where, copy = "torch hub's cache", f"copy {self.expected.name} into {self.cache} here"
            other = f"or set TORCH_HOME to a folder holding hub/checkpoints/{self.expected.name}"
        return (
            f"{job}: model.encoder_weights: {self.weights!r} weights of {self.encoder} are not cached on this "
            f"machine: {self.expected} is missing (looked in {where} {self.cache}) and geoseg downloads nothing "
            f"while a job runs; run `geoseg weights fetch {job}` on a machine with internet access, then {copy} "
            f"({other})"
        )


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it: HF_HUB_CACHE, else ``$HF_HOME/hub``."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return _expand(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub"))


def torch_hub_checkpoints() -> Path:
    """Torch hub's weights folder as ``torch.hub.get_dir()`` resolves it: ``$TORCH_HOME/hub/checkpoints``."""
    env = os.environ
    home = env.get("TORCH_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return _expand(home) / "hub" / "checkpoints"


@cache
def _smp_tables() -> dict[str, Any]:
    """The source of smp's encoder modules, by file: read once, parsed only when an encoder is looked up."""
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or spec.origin is None:
        raise ModelError("model.encoder_weights: segmentation-models-pytorch is not installed; reinstall geoseg")
    return {path.name: path.read_text() for path in sorted((Path(spec.origin).parent / "encoders").glob("*.py"))}


def smp_pretrained_settings(encoder: str) -> dict[str, dict[str, str]] | None:
    """The ``pretrained_settings`` smp has for ``encoder`` ({name: {repo_id, revision}}); None: not an smp encoder.

    Read from the literal table in smp's source (an entry ``"resnet18": {..., "pretrained_settings": {...}}``).
    """
    for text in _smp_tables().values():
        if f'"{encoder}"' not in text:  # most files do not define it: skip parsing them
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == encoder and isinstance(value, ast.Dict):
                    for inner_key, inner in zip(value.keys, value.values, strict=True):
                        if isinstance(inner_key, ast.Constant) and inner_key.value == "pretrained_settings":
                            return ast.literal_eval(inner)
    return None


def _hf_source(encoder: str, weights: str, repo_id: str, revision: str, filenames: tuple[str, ...]) -> WeightsSource:
    cache = hf_hub_cache()
    folder = cache / f"models--{repo_id.replace('/', '--')}"  # huggingface_hub's repo_folder_name
    expected = folder / "snapshots" / revision / filenames[0]
    return WeightsSource(encoder, weights, "huggingface", cache, expected, repo_id, revision, filenames)


def _torch_source(encoder: str, weights: str, url: str) -> WeightsSource:
    folder = torch_hub_checkpoints()
    return WeightsSource(encoder, weights, "torch", folder, folder / url.rsplit("/", 1)[-1], url=url)


def _smp_source(encoder: str, weights: str) -> WeightsSource:
    settings = smp_pretrained_settings(encoder)
    if settings is None:
        raise ModelError(f"model.encoder: unknown encoder {encoder!r} (smp.encoders.get_encoder_names() lists them)")
    if weights not in settings:
        known = f"use one of {', '.join(sorted(settings))}" if settings else "smp has none for it; use"
        raise ModelError(
            f"model.encoder_weights: segmentation-models-pytorch has no {weights!r} weights for encoder {encoder}; "
            f"{known} or a local .safetensors file of the encoder"
        )
    chosen = settings[weights]
    return _hf_source(encoder, weights, chosen["repo_id"], chosen["revision"], ("model.safetensors",))


def _timm_source(encoder: str, weights: str) -> WeightsSource:
    if weights != TIMM_WEIGHTS:
        raise ModelError(
            f"model.encoder_weights: timm encoders take {TIMM_WEIGHTS!r}: timm picks the weights from the model "
            f"name and its tag (e.g. {encoder.split('.')[0]}.a1_in1k); got {weights!r}"
        )
    import timm  # imports torch

    cfg = timm.models.get_pretrained_cfg(encoder[3:])
    url = cfg.url if cfg is not None and isinstance(cfg.url, str) else None
    if cfg is None or not (cfg.hf_hub_id or url):
        raise ModelError(f"model.encoder_weights: timm has no pretrained weights for {encoder[3:]!r}; remove it")
    if cfg.hf_hub_id:  # timm prefers its Hugging Face repository, and a safetensors file there
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        return _hf_source(encoder, weights, repo_id, revision or "main", ("model.safetensors", "pytorch_model.bin"))
    assert url is not None
    return _torch_source(encoder, weights, url)


def _torchvision_source(arch: str, weights: str) -> WeightsSource:
    from torchvision.models import ResNet18_Weights, ResNet50_Weights  # imports torch

    backbone = FIXED_BACKBONES[arch]
    choices = ResNet18_Weights if backbone == "resnet18" else ResNet50_Weights
    member = _TORCHVISION_NAMES.get(weights, weights)
    if member not in choices.__members__:
        raise ModelError(
            f"model.encoder_weights: torchvision's {backbone} backbone of {arch} has no {weights!r} weights; use "
            f"imagenet or one of {', '.join(choices.__members__)}, or a local file"
        )
    return _torch_source(backbone, weights, choices[member].url)


def weights_source(arch: str, encoder: str, weights: str) -> WeightsSource:
    """Where the library that builds ``arch``'s encoder keeps the weights it calls ``weights`` (ModelError: none)."""
    if arch in FIXED_BACKBONES:
        return _torchvision_source(arch, weights)
    if encoder.startswith("tu-"):
        return _timm_source(encoder, weights)
    return _smp_source(encoder, weights)


def cached_weights(source: WeightsSource) -> Path | None:
    """The cached file, or None; looks only on this machine."""
    if source.hub == "torch":
        return source.expected if source.expected.is_file() else None
    from huggingface_hub import try_to_load_from_cache  # light: huggingface_hub loads its parts lazily

    assert source.repo_id is not None
    for filename in source.filenames:
        found = try_to_load_from_cache(source.repo_id, filename, cache_dir=source.cache, revision=source.revision)
        if isinstance(found, str):
            return Path(found)
    return None
