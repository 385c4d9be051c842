"""Pretrained encoders from the libraries' caches, prepared here by the tests (offline: nothing is downloaded).

Each cache holds seeded random weights under the exact name the library uses, so a built model can be
compared with the file tensor by tensor.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file

from geoseg.errors import ModelError
from geoseg.models.card import card_from_json
from geoseg.models.checkpoint import load_checkpoint, save_checkpoint
from geoseg.models.hub_cache import (
    FIXED_BACKBONES,
    hf_hub_cache,
    smp_pretrained_settings,
    torch_hub_checkpoints,
    weights_source,
)
from geoseg.models.pretrained import build_pretrained_model
from geoseg.models.registry import resolve_encoder
from tests.factories import REPO, TINY_UNET, model_card

RESNET18_REVISION = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]["revision"]


def _tensors(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights of ``module``, as a library's file would hold them."""
    torch.manual_seed(seed)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter)
    return {key: value.contiguous() for key, value in module.state_dict().items()}


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches in tmp_path, offline; (HF cache, torch hub checkpoints)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub", tmp_path / "torch" / "hub" / "checkpoints"


def write_smp_resnet18_cache(hub: Path, seed: int = 1) -> tuple[Path, dict[str, torch.Tensor]]:
    """smp's resnet18 'imagenet' file where huggingface_hub keeps it (with the config.json smp also reads)."""
    snapshot = hub / "models--smp-hub--resnet18.imagenet" / "snapshots" / RESNET18_REVISION
    snapshot.mkdir(parents=True)
    state = _tensors(smp.encoders.get_encoder("resnet18", weights=None), seed)
    save_file(state, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")
    return snapshot / "model.safetensors", state


@pytest.fixture
def resnet18_cache(offline_caches):
    return write_smp_resnet18_cache(offline_caches[0])


def test_the_encoder_starts_from_the_cached_file_exactly(resnet18_cache):
    file, state = resnet18_cache
    model, record = build_pretrained_model(
        "unet", in_channels=3, num_classes=3, encoder="resnet18", encoder_weights="imagenet", **TINY_UNET
    )
    built = model.encoder.state_dict()
    assert set(built) == set(state)
    assert all(torch.equal(built[key], state[key]) for key in state)
    assert record.weights == "imagenet" and Path(record.file) == file
    assert record.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_the_weights_and_first_convolution_equal_smps_own_loader(resnet18_cache, bands, monkeypatch):
    """smp itself, pointed at the same cache (it reads huggingface_hub's settings from import time)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_hub_cache()))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ours, _ = build_pretrained_model(
        "unet", in_channels=bands, num_classes=2, encoder="resnet18", encoder_weights="imagenet"
    )
    theirs = smp.create_model("Unet", encoder_name="resnet18", encoder_weights="imagenet", in_channels=bands, classes=2)
    ours_state, theirs_state = ours.encoder.state_dict(), theirs.encoder.state_dict()
    assert ours_state["conv1.weight"].shape == (64, bands, 7, 7)
    assert all(torch.equal(ours_state[key], theirs_state[key]) for key in theirs_state)


def test_the_other_layers_start_as_a_random_init_of_the_same_seed(resnet18_cache):
    from geoseg.models.registry import build_model

    pretrained, _ = build_pretrained_model(
        "unet", in_channels=3, num_classes=3, encoder="resnet18", encoder_weights="imagenet", seed=5, **TINY_UNET
    )
    torch.manual_seed(5)  # as the training loop seeds a model without pretrained weights
    plain = build_model("unet", in_channels=3, num_classes=3, encoder="resnet18", **TINY_UNET)
    for key, value in plain.state_dict().items():
        if not key.startswith("encoder."):
            assert torch.equal(pretrained.state_dict()[key], value), key


def test_uncached_weights_are_refused_in_one_line_saying_which_file_where_and_how(offline_caches):
    hub = offline_caches[0]
    expected = hub / "models--smp-hub--resnet18.imagenet" / "snapshots" / RESNET18_REVISION / "model.safetensors"
    with pytest.raises(ModelError) as info:
        build_pretrained_model(
            "unet", in_channels=3, num_classes=2, encoder="resnet18", encoder_weights="imagenet", job="jobs/x.yaml"
        )
    assert str(info.value) == (
        f"jobs/x.yaml: model.encoder_weights: 'imagenet' weights of resnet18 are not cached on this machine: "
        f"{expected} is missing (looked in the Hugging Face cache {hub}) and geoseg downloads nothing while a job "
        f"runs; run `geoseg weights fetch jobs/x.yaml` on a machine with internet access, then copy its Hugging "
        f"Face cache folder to {hub} here (or set HF_HUB_CACHE to the copied folder)"
    )


@pytest.mark.parametrize(
    "arch, encoder, weights, expected",
    [
        ("unet", "resnet18", "instagram", "use one of imagenet, ssl, swsl"),
        ("unet", "tu-resnet18", "imagenet", "timm encoders take 'timm'"),
        ("fcn_resnet50", "resnet50", "ssl", "use imagenet or one of IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"),
    ],
)
def test_weights_a_library_does_not_have_are_refused_with_the_choices(offline_caches, arch, encoder, weights, expected):
    with pytest.raises(ModelError, match=r"^model\.encoder_weights: ") as info:
        weights_source(arch, encoder, weights)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_smps_table_is_read_exactly_without_running_smp():
    for encoder, entry in smp.encoders.encoders.items():
        assert smp_pretrained_settings(encoder) == entry["pretrained_settings"], encoder
    assert smp_pretrained_settings("no-such-encoder") is None


def test_looking_in_the_cache_imports_no_torch(tmp_path):
    code = (
        "import sys\n"
        "from geoseg.models.hub_cache import cached_weights, weights_source\n"
        "print(cached_weights(weights_source('unet', 'resnet18', 'imagenet')))\n"
        "assert 'torch' not in sys.modules and 'segmentation_models_pytorch' not in sys.modules\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr


def test_cache_folders_follow_the_environment_as_the_libraries_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    assert torch_hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints" == tmp_path / "t/hub/checkpoints"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h"))
    assert hf_hub_cache() == tmp_path / "h" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))  # wins over HF_HOME, as in huggingface_hub
    assert hf_hub_cache() == tmp_path / "c"


def test_torchvision_backbones_are_the_registrys():
    for arch, backbone in FIXED_BACKBONES.items():
        assert resolve_encoder(arch) == backbone


def test_a_torchvision_backbone_starts_from_torch_hubs_file(offline_caches):
    """Mask R-CNN's ResNet-18 from torchvision's ImageNet file (a torch file, read with weights_only)."""
    from torchvision.models import resnet18

    checkpoints = offline_caches[1]
    checkpoints.mkdir(parents=True)
    state = _tensors(resnet18(weights=None), seed=2)  # with the classifier (fc) an ImageNet file holds
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")
    model, record = build_pretrained_model(
        "maskrcnn_resnet18_fpn", in_channels=3, num_classes=2, encoder="resnet18", encoder_weights="imagenet"
    )
    body = model.backbone.body.state_dict()
    assert all(torch.equal(body[key], state[key]) for key in body)
    assert Path(record.file) == checkpoints / "resnet18-f37072fd.pth"


def test_a_timm_encoder_is_loaded_by_timms_own_loader(offline_caches):
    """timm's resnet18 from its Hugging Face repository (revision main, as timm names it)."""
    import timm

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_caches[0] / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = _tensors(timm.create_model("resnet18", pretrained=False), seed=3)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    model, _ = build_pretrained_model(
        "unet", in_channels=3, num_classes=2, encoder="tu-resnet18", encoder_weights="timm", **TINY_UNET
    )
    built = model.encoder.state_dict()
    assert torch.equal(built["model.layer2.1.conv2.weight"], state["layer2.1.conv2.weight"])
    assert torch.equal(built["model.conv1.weight"], state["conv1.weight"])


def test_a_local_file_of_a_whole_model_fills_the_encoder(tmp_path, offline_caches):
    from geoseg.models.registry import build_model

    donor = build_model("unet", in_channels=3, num_classes=2, encoder="resnet18", **TINY_UNET)
    state = _tensors(donor, seed=4)
    save_file(state, str(tmp_path / "whole.safetensors"))
    model, record = build_pretrained_model(
        "unet", in_channels=3, num_classes=5, encoder="resnet18", encoder_weights=tmp_path / "whole.safetensors"
    )
    assert all(torch.equal(value, state[f"encoder.{key}"]) for key, value in model.encoder.state_dict().items())
    assert record.weights == record.file == str(tmp_path / "whole.safetensors")


def test_a_local_file_of_another_encoder_is_refused(tmp_path, offline_caches):
    resnet34 = smp.encoders.get_encoder("resnet34", weights=None).state_dict()  # every resnet18 key, and more
    resnet18 = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    extra = [key for key in resnet34 if key not in resnet18]
    torch.save(resnet34, tmp_path / "resnet34.pth")
    with pytest.raises(ModelError) as info:
        build_pretrained_model(
            "unet", in_channels=3, num_classes=2, encoder="resnet18", encoder_weights=tmp_path / "resnet34.pth"
        )
    assert str(info.value) == (
        f"{tmp_path / 'resnet34.pth'}: model.encoder_weights: holds {len(extra)} weights the encoder does not "
        f"have (e.g. {extra[0]!r}); give a state dict of this encoder (model.encoder)"
    )


def test_the_card_records_the_weights_and_older_cards_still_load(resnet18_cache):
    _, record = build_pretrained_model(
        "unet", in_channels=3, num_classes=2, encoder="resnet18", encoder_weights="imagenet", **TINY_UNET
    )
    card = model_card(
        arch="unet", encoder="resnet18", options=TINY_UNET, classes=("a", "b"), bands=(1, 2, 3), encoder_weights=record
    )
    written = json.loads(card.to_json())["encoder_weights"]
    assert written == {"weights": "imagenet", "file": record.file, "sha256": record.sha256}
    assert card_from_json(card.to_json(), "card.json") == card
    older = json.loads(card.to_json())
    del older["encoder_weights"]
    assert card_from_json(json.dumps(older), "card.json").encoder_weights is None


def test_a_checkpoint_predicts_without_the_pretrained_file(resnet18_cache, tmp_path):
    file, _ = resnet18_cache
    model, record = build_pretrained_model(
        "unet", in_channels=3, num_classes=2, encoder="resnet18", encoder_weights="imagenet", **TINY_UNET
    )
    card = model_card(
        arch="unet", encoder="resnet18", options=TINY_UNET, classes=("a", "b"), bands=(1, 2, 3), encoder_weights=record
    )
    save_checkpoint(tmp_path / "checkpoint", model, card)
    file.unlink()  # the cache is gone
    loaded, loaded_card = load_checkpoint(tmp_path / "checkpoint")
    saved = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(value, saved[key]) for key, value in loaded.state_dict().items())
    assert loaded_card.encoder_weights == record
    with torch.no_grad():
        assert loaded(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
