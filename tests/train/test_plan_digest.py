"""The training run's name (`TrainingPlan.digest`): what changes the weights changes it, the tiling does not."""

from geoseg.job import load_job
from geoseg.stages.train import training_plan
from tests.factories import tiny_job


def _digest(folder, scene, labels, **overrides) -> str:
    return training_plan(load_job(tiny_job(folder, scene, labels, **overrides)), log=lambda line: None).digest()


def test_a_job_that_only_changes_its_tiling_keeps_its_training_run(tiny):
    folder, scene, labels = tiny
    first = _digest(folder, scene, labels)
    assert _digest(folder, scene, labels, tiling={"tile_size": 128, "halo": 32}) == first
    assert _digest(folder, scene, labels, tiling="auto") == first


def test_what_decides_the_weights_changes_the_run(tiny):
    folder, scene, labels = tiny
    first = _digest(folder, scene, labels)
    train = {
        "scenes": [{"image": str(scene), "labels": str(labels)}],
        "tile_size": 64,
        "batch_size": 4,
        "epochs": 3,
        "steps_per_epoch": 3,
    }
    assert _digest(folder, scene, labels, train=train) != first
    model = {"arch": "unet", "encoder": "resnet18", "options": {"encoder_depth": 3, "decoder_channels": [16, 16, 8]}}
    assert _digest(folder, scene, labels, model=model) != first
