"""Pretrained encoders through the command line: refused before anything runs when not cached, fetched by
``geoseg weights fetch``, trained from, recorded in the card, and not needed again to predict.

Offline: every cache is prepared by the test in its own folder (HF_HOME, TORCH_HOME, HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file

from geoseg.cli import main
from tests.factories import TINY_UNET, fit_in_process, tiny_job

REVISION = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]["revision"]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty, offline Hugging Face cache of this test's own."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def cached_file(hub: Path) -> Path:
    return hub / "models--smp-hub--resnet18.imagenet" / "snapshots" / REVISION / "model.safetensors"


def cache_resnet18(hub: Path) -> dict[str, torch.Tensor]:
    """Seeded random resnet18 weights under the name smp reads its 'imagenet' ones from."""
    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    torch.manual_seed(11)
    for parameter in encoder.parameters():
        torch.nn.init.normal_(parameter)
    state = {key: value.contiguous() for key, value in encoder.state_dict().items()}
    cached_file(hub).parent.mkdir(parents=True)
    save_file(state, str(cached_file(hub)))
    return state


def pretrained_job(folder: Path, scene: Path, labels: Path, **overrides) -> Path:
    model = {"arch": "unet", "encoder": "resnet18", "options": TINY_UNET, "encoder_weights": "imagenet"}
    return tiny_job(folder, scene, labels, model=model, **overrides)


def run_cli(args, capsys) -> tuple[int, list[str], list[str]]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out.splitlines()


def test_uncached_weights_are_refused_before_anything_runs(tiny, hub, capsys):
    folder, scene, labels = tiny
    job = pretrained_job(folder, scene, labels)
    expected = (
        f"geoseg: error: {job}: model.encoder_weights: 'imagenet' weights of resnet18 are not cached on this "
        f"machine: {cached_file(hub)} is missing (looked in the Hugging Face cache {hub}) and geoseg downloads "
        f"nothing while a job runs; run `geoseg weights fetch {job}` on a machine with internet access, then copy "
        f"its Hugging Face cache folder to {hub} here (or set HF_HUB_CACHE to the copied folder)"
    )
    for command in ("validate", "run"):
        code, err, _ = run_cli([command, job], capsys)
        assert (code, err) == (2, [expected])
    assert not (folder / "out").exists()  # refused before anything was written


def test_a_missing_local_weights_file_is_named(tiny, hub, capsys):
    folder, scene, labels = tiny
    model = {"arch": "unet", "encoder": "resnet18", "options": TINY_UNET, "encoder_weights": "enc/r18.safetensors"}
    job = tiny_job(folder, scene, labels, model=model)
    code, err, _ = run_cli(["validate", job], capsys)
    assert (code, err) == (
        2,
        [f"geoseg: error: {folder / 'enc/r18.safetensors'}: model.encoder_weights: file not found; check the path "
         f"(relative to {job})"],
    )  # fmt: skip


def test_cached_weights_validate(tiny, hub, capsys):
    folder, scene, labels = tiny
    cache_resnet18(hub)
    code, err, out = run_cli(["validate", pretrained_job(folder, scene, labels)], capsys)
    assert code == 0 and not err and out[-1].endswith("OK (job 'tiny', stages train, predict, vectorize, evaluate)")


def test_weights_fetch_prints_the_cached_file(tiny, hub, capsys):
    folder, scene, labels = tiny
    cache_resnet18(hub)
    code, err, out = run_cli(["weights", "fetch", pretrained_job(folder, scene, labels)], capsys)
    digest = hashlib.sha256(cached_file(hub).read_bytes()).hexdigest()
    megabytes = cached_file(hub).stat().st_size / 1e6
    assert code == 0 and not err
    assert out == [
        f"weights: 'imagenet' weights of resnet18: {cached_file(hub)} ({megabytes:.1f} MB, sha256 {digest[:16]})",
        f"weights: for a machine without internet access, copy {hub} to the same place there (or anywhere, and "
        "set HF_HUB_CACHE to it)",
    ]


def test_weights_fetch_offline_and_uncached_fails_in_one_line(tiny, hub, capsys):
    folder, scene, labels = tiny
    code, err, _ = run_cli(["weights", "fetch", pretrained_job(folder, scene, labels)], capsys)
    assert code == 1 and len(err) == 1
    assert err[0].startswith(
        "geoseg: error: weights fetch: could not download 'imagenet' weights of resnet18 from "
        "smp-hub/resnet18.imagenet ("
    )
    assert err[0].endswith("); unset HF_HUB_OFFLINE and run it on a machine with internet access")
    assert not hub.exists() or not any(hub.rglob("*.safetensors"))


def test_weights_fetch_needs_named_weights(tiny, hub, capsys):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels)
    code, err, _ = run_cli(["weights", "fetch", job], capsys)
    assert (code, err) == (
        2,
        [f"geoseg: error: {job}: model.encoder_weights: not set, so there is nothing to fetch; name the encoder's "
         "weights in the job, e.g. encoder_weights: imagenet"],
    )  # fmt: skip


def test_training_starts_from_the_cached_encoder_and_prediction_does_not_need_it(tiny, hub, monkeypatch):
    import geoseg.stages.train
    from geoseg.job import run_job, validate_job
    from geoseg.models.checkpoint import load_checkpoint

    # The model is what this test is about: train in this process, without Ray.
    monkeypatch.setattr(geoseg.stages.train, "fit_model", fit_in_process)
    monkeypatch.setattr(geoseg.stages.train, "ray_session", lambda *args, **kwargs: nullcontext())
    folder, scene, labels = tiny
    state = cache_resnet18(hub)
    train = {"scenes": [{"image": str(scene), "labels": str(labels)}], "tile_size": 64, "batch_size": 2}
    job = pretrained_job(folder, scene, labels, train={**train, "epochs": 1, "steps_per_epoch": 2})
    lines: list[str] = []
    run_job(job, stages=["train"], log=lines.append)
    digest = hashlib.sha256(cached_file(hub).read_bytes()).hexdigest()
    assert f"train: encoder resnet18 starts from 'imagenet' weights ({cached_file(hub)}, sha256 {digest[:12]})" in lines

    start = load_file(str(folder / "out" / "train" / "initial_weights.safetensors"))
    assert all(torch.equal(start[f"encoder.{key}"], value) for key, value in state.items())
    card = json.loads((folder / "out" / "checkpoint" / "model_card.json").read_text())
    assert card["encoder_weights"] == {"weights": "imagenet", "file": str(cached_file(hub)), "sha256": digest}
    trained = load_file(str(folder / "out" / "checkpoint" / "model.safetensors"))
    assert not torch.equal(trained["encoder.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])  # it trained

    shutil.rmtree(hub.parent)  # the cache is gone: prediction reads the checkpoint alone
    validate_job(job, stages=["predict"])
    model, _ = load_checkpoint(folder / "out" / "checkpoint")
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())


def test_whole_model_weights_and_encoder_weights_are_not_both_taken(tiny, hub, capsys):
    folder, scene, labels = tiny
    model = {"arch": "unet", "encoder_weights": "imagenet", "weights": "start.safetensors"}
    job = tiny_job(folder, scene, labels, model=model)
    code, err, _ = run_cli(["validate", job], capsys)
    assert (code, err) == (
        2,
        [f"geoseg: error: {job}: model: model.weights sets every weight of the model, model.encoder_weights only "
         "the encoder's; remove one of them"],
    )  # fmt: skip
