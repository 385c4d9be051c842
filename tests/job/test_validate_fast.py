"""`geoseg validate` without torch or Ray: the table of known strides, and the fallback that builds the model.

The table (:mod:`geoseg.models.known`) must say what the built models say; where it cannot
answer, validation builds the model as before, and both paths report the same problems.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from geoseg.job.preflight import check_job_inputs
from geoseg.job.run import validate_job
from geoseg.models.known import ARCHITECTURE_NAMES, INSTANCE_ARCHITECTURE_NAMES, is_instance_arch, known_stride
from tests.factories import tiny_job

SMP_ENCODERS = ("resnet18", "resnet34", "resnet50")


def test_validate_imports_neither_torch_nor_ray(tiny):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels)
    code = f"""
        import sys
        from geoseg.cli import main
        code = main(["validate", {str(job)!r}])
        heavy = ("torch", "ray", "torchvision", "segmentation_models_pytorch")
        print("exit", code, "loaded", sorted(m for m in heavy if m in sys.modules))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{job}: OK (job 'tiny', stages train, predict, vectorize, evaluate)",
        "exit 0 loaded []",
    ]


def test_the_stages_after_prediction_do_not_load_torch():
    """Their driver holds no model: torch alone would add ~600 MB to it and seconds to every stage."""
    code = """
        import sys
        import geoseg.stages.vectorize, geoseg.stages.panoptic, geoseg.stages.impact, geoseg.stages.evaluate
        print(sorted(m for m in ("torch", "torchvision", "segmentation_models_pytorch") if m in sys.modules))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]"]


def test_the_names_are_the_registrys():
    from geoseg.models.instance import INSTANCE_ARCHITECTURES
    from geoseg.models.instance import is_instance_arch as registry_is_instance
    from geoseg.models.registry import ARCHITECTURES

    assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES
    assert tuple(INSTANCE_ARCHITECTURES) == INSTANCE_ARCHITECTURE_NAMES
    assert [is_instance_arch(a) for a in ARCHITECTURE_NAMES] == [registry_is_instance(a) for a in ARCHITECTURE_NAMES]


@pytest.mark.parametrize("arch", ARCHITECTURE_NAMES)
def test_known_strides_are_what_the_built_models_report(arch):
    from geoseg.models.registry import SMP_ARCHITECTURES, build_model, output_stride

    encoders = SMP_ENCODERS if arch in SMP_ARCHITECTURES else ("resnet18", "resnet50" if "50" in arch else "resnet18")
    for encoder in encoders:
        stride = known_stride(arch, encoder, {})
        model = build_model(arch, in_channels=3, num_classes=2, encoder=encoder)
        assert stride == output_stride(model), (arch, encoder)


@pytest.mark.parametrize("arch", ["unet", "unetplusplus"])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_known_strides_follow_encoder_depth(arch, depth):
    from geoseg.models.registry import build_model, output_stride

    options = {"encoder_depth": depth, "decoder_channels": [8 * 2**i for i in range(depth)][::-1]}
    model = build_model(arch, in_channels=3, num_classes=2, encoder="resnet18", **options)
    assert known_stride(arch, "resnet18", options) == output_stride(model) == 2**depth


@pytest.mark.parametrize(
    ("arch", "encoder", "options"),
    [
        ("unet", "resnet18", {"decoder_channels": [64, 32, 16]}),  # one per stage: five at depth 5
        ("unet", "resnet18", {"encoder_depth": 3}),  # smp's five default channels do not fit depth 3
        ("unet", "resnet18", {"decoder_channels": [64, 32, 16, 8, True]}),
        ("fcn_resnet50", "resnet18", {"encoder_depth": 4}),  # torchvision's recipes take no options
        ("fcn_resnet50", "resnet34", {}),  # nor another backbone
    ],
)
def test_what_the_registry_refuses_is_left_to_it(arch, encoder, options):
    """None (build the model) for combinations the registry refuses, so validation still reports them."""
    from geoseg.errors import ModelError
    from geoseg.models.registry import build_model

    assert known_stride(arch, encoder, options) is None
    with pytest.raises(ModelError):
        build_model(arch, in_channels=3, num_classes=2, encoder=encoder, **options)


@pytest.mark.parametrize(
    ("arch", "encoder", "options"),
    [
        ("unet", "efficientnet-b0", {}),  # an encoder the table does not know
        ("unet", "resnet18", {"decoder_attention_type": "scse"}),  # an option it does not know
        ("deeplabv3plus", "resnet18", {"encoder_output_stride": 8}),
        ("not_an_arch", "resnet18", {}),
    ],
)
def test_the_table_does_not_guess(arch, encoder, options):
    assert known_stride(arch, encoder, options) is None


@pytest.mark.parametrize(
    ("model", "tiling"),
    [
        ({"arch": "unet", "encoder": "resnet18"}, {"tile_size": 100, "halo": 16}),
        ({"arch": "pan", "encoder": "resnet34"}, {"tile_size": 256, "halo": 32}),
        ({"arch": "unet", "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}, {"tile_size": 92}),
    ],
)
def test_the_table_and_the_built_model_report_the_same_problems(model, tiling, tiny, monkeypatch):
    folder, scene, labels = tiny
    path = tiny_job(folder, scene, labels, model=model, tiling=tiling)
    from geoseg.job.load import load_job

    job = load_job(path)
    fast = check_job_inputs(job, ["train", "predict"], str(path))
    monkeypatch.setattr("geoseg.job.preflight.known_stride", lambda *args: None)
    built = check_job_inputs(job, ["train", "predict"], str(path))
    assert fast == built
    assert any("output stride" in problem for problem in fast)


def test_a_batch_of_one_is_still_tried_on_the_model(tiny):
    """The one check the table cannot answer: BatchNorm after global pooling with one crop (DeepLab)."""
    folder, scene, labels = tiny
    train = {"scenes": [{"image": str(scene), "labels": str(labels)}], "tile_size": 64, "batch_size": 1}
    path = tiny_job(folder, scene, labels, model={"arch": "deeplabv3plus"}, train=train, tiling={"tile_size": 96})
    with pytest.raises(Exception, match="cannot train on one crop at a time; use batch_size 2 or more"):
        validate_job(path)
