"""The model card: typed, versioned, validated by every reader; a bad card is refused in one line with the fix."""

import json

import pytest
import torch

from geoseg.errors import CheckpointError
from geoseg.models.card import CARD_FORMAT, ModelCard
from geoseg.models.checkpoint import CARD, load_checkpoint, read_card, save_checkpoint
from geoseg.models.registry import build_model
from tests.factories import TINY_UNET, model_card


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=3, **TINY_UNET)
    card = model_card(
        arch="unet",
        encoder="resnet18",
        options=TINY_UNET,
        classes=["bg", "water", "road"],
        bands=[1, 2, 3],
        mean=[100.0, 90.0, 80.0],
        std=[30.0, 30.0, 30.0],
        run="job-0123456789",
    )
    return save_checkpoint(tmp_path / "ckpt", model, card), card


def test_a_card_round_trips_through_its_json(checkpoint):
    folder, card = checkpoint
    written = json.loads((folder / CARD).read_text())
    assert written["format"] == CARD_FORMAT and written["bands"] == [1, 2, 3]
    assert "training" not in written  # unset fields are left out, not written as null
    assert read_card(folder) == card
    _, loaded = load_checkpoint(folder)
    assert loaded == card and loaded.in_channels == 3 and loaded.num_classes == 3
    with pytest.raises(Exception, match="frozen"):
        loaded.arch = "fpn"  # a card is read-only: what the weights are does not change


def _edit(folder, **changes):
    data = json.loads((folder / CARD).read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    (folder / CARD).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"format": None}, "format: None is not a model card this geoseg reads ('geoseg-model-card/1'); retrain"),
        ({"format": "geoseg-model-card/9"}, "format: 'geoseg-model-card/9' is not a model card this geoseg reads"),
        ({"bands": []}, "bands: Tuple should have at least 1 item after validation, not 0"),
        ({"classes": "water"}, "classes: Input should be a valid tuple (got 'water')"),
        ({"normalization": None}, "normalization: Field required"),
        ({"colour": "blue"}, "colour: unknown field (got 'blue')"),
    ],
)
def test_a_bad_card_is_refused_in_one_line_with_the_fix(checkpoint, changes, expected):
    folder, _ = checkpoint
    _edit(folder, **changes)
    with pytest.raises(CheckpointError) as raised:
        read_card(folder)
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and message.startswith(str(folder / CARD)), message
    assert expected in message, message
    assert "`geoseg train JOB`" in message


def test_every_problem_of_a_card_is_named_at_once(checkpoint):
    folder, _ = checkpoint
    _edit(folder, bands=[], dtype=None)
    with pytest.raises(CheckpointError, match=r"bands: .*; dtype: Field required"):
        read_card(folder)


def test_a_card_that_is_not_json_is_refused(checkpoint):
    folder, _ = checkpoint
    (folder / CARD).write_text("{not json")
    with pytest.raises(CheckpointError, match="model card is not valid JSON"):
        read_card(folder)


def test_a_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found .* run the train stage first"):
        read_card(tmp_path / "nothing")


def test_the_training_summary_names_its_score():
    card = ModelCard.model_validate(
        {
            **model_card(arch="unet", encoder="resnet18", classes=["a", "b"], bands=[1]).model_dump(),
            "training": {"epochs_run": 3, "best_epoch": 2, "val_f1": 0.9},
        }
    )
    assert card.training.val_f1 == 0.9 and card.training.val_miou is None
    assert json.loads(card.to_json())["training"] == {"epochs_run": 3, "best_epoch": 2, "val_f1": 0.9}
