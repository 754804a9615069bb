"""Regularisation pieces on hand-made inputs: dropout's place and mode, label smoothing's loss,
the composites' shift augmentation, and early stopping's choice of epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from multitask.config import (
    AugmentConfig,
    ConfigError,
    DropoutConfig,
    EarlyStoppingConfig,
    ModelConfig,
    parse_params,
)
from multitask.data.composites import ITEM, build_composites
from multitask.models import ARCHITECTURES, build_model
from multitask.tasks import Task
from multitask.training.augment import Augmenter, blank_margins, translate
from multitask.training.selection import RAN_ALL, STOPPED_EARLY, Selection
from multitask.training.trainer import task_losses

TASKS = [Task("left", 10), Task("right", 10)]


# ------------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_dropout_is_active_in_train_mode_and_off_in_eval(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture=architecture,
                                    dropout=DropoutConfig(encoder=0.5, heads=0.5)),
                        TASKS, 1, 36)
    x = torch.randn(8, 1, 36, 36)
    model.train()
    first, second = model(x)["left"], model(x)["left"]
    assert not torch.equal(first, second)  # a new mask each pass
    model.eval()
    assert torch.equal(model(x)["left"], model(x)["left"])


def test_dropout_sits_before_lenets_fc_and_before_each_heads_classifier() -> None:
    model = build_model(ModelConfig(dropout=DropoutConfig(encoder=0.3, heads=0.2)), TASKS, 1, 36)
    encoder = model.encoder
    assert isinstance(encoder.features[-1], nn.Dropout) and encoder.features[-1].p == 0.3
    assert isinstance(encoder.features[-2], nn.Flatten)  # the 500 features entering fc
    for head in model.heads.values():
        assert isinstance(head[-2], nn.Dropout) and head[-2].p == 0.2
        assert isinstance(head[-1], nn.Linear)


def test_no_dropout_means_no_dropout_layer_and_the_same_keys() -> None:
    """At 0 the network is the one built before dropout existed: same modules, same keys."""
    plain = build_model(ModelConfig(), TASKS, 1, 36)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    dropped = build_model(ModelConfig(dropout=DropoutConfig(encoder=0.3)), TASKS, 1, 36)
    assert list(plain.state_dict()) == list(dropped.state_dict())


def test_torchvision_encoder_dropout_acts_on_the_pooled_features() -> None:
    pytest.importorskip("torchvision")
    from multitask.models.backbones import build_backbone

    encoder = build_backbone("resnet18", 1, 36, dropout=0.5)
    assert isinstance(encoder.readout()[-1], nn.Dropout)
    x = torch.randn(2, 1, 36, 36)
    encoder.train()
    assert (encoder(x) == 0).float().mean() > 0.3  # about half the pooled features dropped
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))


# ---------------------------------------------------------------------------- label smoothing
def test_label_smoothing_loss_matches_a_hand_computation() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(), TASKS, 1, 36).eval()
    x, y = torch.randn(4, 1, 36, 36), torch.tensor([[1, 2], [3, 4], [0, 9], [7, 7]])
    epsilon = 0.2
    losses, _ = task_losses(model, TASKS, [0, 1], x, y, label_smoothing=epsilon)
    with torch.no_grad():
        outputs = model(x)
    for t, task in enumerate(TASKS):
        logits = outputs[task.name].double().numpy()
        expected = 0.0
        for row, label in zip(logits, y[:, t].tolist(), strict=True):
            log_p = row - math.log(np.exp(row).sum())
            target = np.full(10, epsilon / 10)
            target[label] += 1 - epsilon
            expected -= float((target * log_p).sum())
        assert losses[t].item() == pytest.approx(expected / len(x), rel=1e-5)
    plain, _ = task_losses(model, TASKS, [0, 1], x, y)
    assert not torch.allclose(plain, losses)


# ------------------------------------------------------------------------------- augmentation
LEFT_VALUE, RIGHT_VALUE = 100, 200


def composites(count: int = 64, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Composites whose left items are all LEFT_VALUE and right ones RIGHT_VALUE (the right
    drawn last wins where they overlap), each item a 20x20 block with a 4-pixel blank border
    like a Fashion-MNIST item's; also their offsets."""
    item = np.zeros((10, ITEM, ITEM), dtype=np.uint8)
    item[:, 4:24, 4:24] = 1
    labels = np.arange(10, dtype=np.uint8)
    built = build_composites(item * LEFT_VALUE, labels, item * RIGHT_VALUE, labels, count,
                             36, 4, np.random.default_rng(seed))
    return torch.from_numpy(built.images), built.offsets


def box(image: torch.Tensor, value: int) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(image == value, as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def test_shift_keeps_each_item_whole_and_in_its_corner() -> None:
    """Both items move by one vector of at most ``shift`` pixels: no pixel of either is lost,
    the left item stays above and left of the right one by the offset it had, so both labels
    still name the right items."""
    images, _ = composites()
    augmenter = Augmenter(AugmentConfig(shift=3))
    moved = augmenter.apply(images, augmenter.draw(len(images), torch.Generator().manual_seed(1)))
    assert not torch.equal(moved, images)
    for before, after in zip(images, moved, strict=True):
        for value in (LEFT_VALUE, RIGHT_VALUE):
            assert int((after == value).sum()) == int((before == value).sum())  # whole
        (lt, ll, _, _), (rt, rl, _, _) = box(before, LEFT_VALUE), box(before, RIGHT_VALUE)
        (lt2, ll2, _, _), (rt2, rl2, _, _) = box(after, LEFT_VALUE), box(after, RIGHT_VALUE)
        dy, dx = lt2 - lt, ll2 - ll
        assert max(abs(dy), abs(dx)) <= 3
        assert (rt2 - rt, rl2 - rl) == (dy, dx)  # the same move for both items
        assert rt2 >= lt2 and rl2 >= ll2  # left item still top-left of the right one
        assert torch.equal(after, translate(before[None], torch.tensor([dy]),
                                            torch.tensor([dx]))[0])


def test_shift_never_moves_content_past_the_blank_margin() -> None:
    image = torch.zeros(1, 10, 10, dtype=torch.uint8)
    image[0, 0, 5] = 7  # content touching the top edge: no room to move up
    (top, bottom), (left, right) = blank_margins(image)
    assert (int(top), int(bottom), int(left), int(right)) == (0, 9, 5, 4)
    augmenter = Augmenter(AugmentConfig(shift=8))
    for seed in range(20):
        moved = augmenter.apply(image, augmenter.draw(1, torch.Generator().manual_seed(seed)))
        assert int(moved.sum()) == 7
        row = int(torch.nonzero(moved[0])[0, 0])
        assert row >= 0


def test_augmentation_is_reproducible_and_resumes_from_the_generator_state() -> None:
    images, _ = composites(16)
    augmenter = Augmenter(AugmentConfig(shift=2))
    generator = torch.Generator().manual_seed(5)
    first = [augmenter.apply(images, augmenter.draw(16, generator)) for _ in range(2)]
    saved = generator.get_state()  # what a checkpoint holds
    later = augmenter.apply(images, augmenter.draw(16, generator))
    again = torch.Generator().manual_seed(5)
    assert all(torch.equal(a, augmenter.apply(images, augmenter.draw(16, again)))
               for a in first)
    resumed = torch.Generator()
    resumed.set_state(saved)
    assert torch.equal(later, augmenter.apply(images, augmenter.draw(16, resumed)))


def test_flip_and_crop_are_refused_where_the_data_set_forbids_them() -> None:
    for augment, key in (({"flip": True}, "train.augment.flip"),
                         ({"crop": 2}, "train.augment.crop")):
        with pytest.raises(ConfigError, match=rf"{key}: .*multifashion.*safe for it: shift"):
            parse_params({"train": {"augment": augment}})
    assert parse_params({"train": {"augment": {"shift": 2}}}).train.augment.shift == 2


def test_flip_mirrors_about_half_the_images_and_crop_shifts_with_loss_at_the_border() -> None:
    images = torch.arange(4 * 36, dtype=torch.uint8).view(1, 4, 36).repeat(200, 1, 1)
    flipper = Augmenter(AugmentConfig(flip=True))
    flipped = flipper.apply(images, flipper.draw(200, torch.Generator().manual_seed(0)))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert 70 < int(mirrored.sum()) < 130
    assert bool((mirrored | (flipped == images).flatten(1).all(1)).all())
    cropper = Augmenter(AugmentConfig(crop=2))
    cropped = cropper.apply(images, cropper.draw(200, torch.Generator().manual_seed(0)))
    assert (cropped == 0).any() and cropped.shape == images.shape


@pytest.mark.parametrize("config", [AugmentConfig(flip=True), AugmentConfig(crop=3),
                                    AugmentConfig(flip=True, crop=2)])
def test_colour_images_move_each_channel_as_one_image_would(config: AugmentConfig) -> None:
    """(B, H, W, C): every channel gets exactly what a grey image with the same draws gets,
    so the channels of one image stay aligned and in their order."""
    gen = torch.Generator().manual_seed(1)
    colour = torch.randint(0, 256, (16, 12, 12, 3), generator=gen, dtype=torch.uint8)
    augmenter = Augmenter(config)
    draws = augmenter.draw(16, torch.Generator().manual_seed(2))
    moved = augmenter.apply(colour, draws)
    assert moved.shape == colour.shape
    for channel in range(3):
        assert torch.equal(moved[..., channel], augmenter.apply(colour[..., channel], draws))
    assert not torch.equal(moved, colour)


def test_shift_refuses_colour_images() -> None:
    augmenter = Augmenter(AugmentConfig(shift=2))
    with pytest.raises(ValueError, match="shift: composites only"):
        augmenter.apply(torch.zeros(2, 8, 8, 3, dtype=torch.uint8),
                        augmenter.draw(2, torch.Generator().manual_seed(0)))


# ----------------------------------------------------------------------------- early stopping
def record(left: float, right: float) -> dict[str, float]:
    return {"val/accuracy/left": left, "val/accuracy/right": right}


def test_early_stopping_stops_after_patience_and_restores_the_best_weights() -> None:
    net = nn.Linear(1, 1)
    selection = Selection(EarlyStoppingConfig(patience=2), TASKS)
    scores = [(0.5, 0.5), (0.75, 0.5), (0.5, 0.75), (0.5, 0.5), (1.0, 1.0)]
    for epoch, (left, right) in enumerate(scores, start=1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        logged = selection.observe(epoch, record(left, right), net)
        assert logged == {"val/mean_accuracy": pytest.approx((left + right) / 2)}
        if selection.stopped:
            break
    assert epoch == 4  # epochs 3 (a tie: not better) and 4 not better than epoch 2 (0.625)
    selection.restore(net)
    assert net.weight.item() == 2.0
    assert selection.summary(4) == {
        "select": "mean_accuracy", "patience": 2, "score_key": "val/mean_accuracy",
        "best_score": 0.625, "kept_epoch": 2, "epochs_run": 4,
        "stopped": STOPPED_EARLY}
    assert RAN_ALL != STOPPED_EARLY


def test_delta_m_selection_scores_against_the_baselines_validation_accuracy() -> None:
    reference = {"left": 0.8, "right": 0.5}
    selection = Selection(EarlyStoppingConfig(patience=1, select="delta_m"), TASKS, reference)
    net = nn.Linear(1, 1)
    # mean accuracy prefers the first (0.7 > 0.65), Δm% the second (-6.25 < +5.0)
    first = selection.observe(1, record(0.9, 0.5), net)["val/delta_m_pct"]
    second = selection.observe(2, record(0.6, 0.7), net)["val/delta_m_pct"]
    assert first == pytest.approx(100 * (0.1 / 0.8 + 0.0) / 2)
    assert second == pytest.approx(100 * (-0.2 / 0.8 + 0.2 / 0.5) / 2)
    assert selection.best_epoch == 2
    with pytest.raises(ValueError, match="delta_m needs the baselines' validation"):
        Selection(EarlyStoppingConfig(patience=1, select="delta_m"), TASKS)
    # one task (a baseline): Δm% is increasing in its accuracy, so its accuracy decides
    single = Selection(EarlyStoppingConfig(patience=1, select="delta_m"), TASKS[:1])
    assert single.observe(1, record(0.4, 0.0), net) == {"val/mean_accuracy": 0.4}


def test_selection_state_round_trips() -> None:
    net = nn.Linear(1, 1)
    selection = Selection(EarlyStoppingConfig(patience=3), TASKS)
    selection.observe(1, record(0.5, 0.5), net)
    selection.observe(2, record(0.4, 0.4), net)
    copy = Selection(EarlyStoppingConfig(patience=3), TASKS)
    copy.load_state_dict(selection.state_dict())
    assert copy.summary(2) == selection.summary(2)
    assert copy.since_best == 1 and torch.equal(copy.best_state["weight"], net.weight)
