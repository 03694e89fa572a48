"""Batch mixing (model.mixing): mixup and CutMix mix images, labels' weights and lesion masks alike."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import CLASSES, train_tiny
from skintumor.augment.mixing import mix_batch
from skintumor.models.module import SkinTumorClassifier, load_classifier

NET = {"attention": True, "pretrained": False}


def _batch(n: int = 8, size: int = 16):
    """Image i is the constant i; its mask is a lesion in row i (unknown, -1, for the last image)."""
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, size, size).clone()
    y = torch.arange(n) % 3
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        masks[i, 0, i] = 1.0
    masks[-1] = -1.0
    return x, y, masks


def test_no_alpha_leaves_the_batch_alone():
    x, y, masks = _batch()
    mixed = mix_batch(x, y, masks)
    assert mixed.lam == 1.0 and mixed.x is x and mixed.masks is masks and torch.equal(mixed.y_b, y)


def test_mixup_blends_images_and_masks_with_the_same_weight():
    torch.manual_seed(0)
    x, y, masks = _batch()
    mixed = mix_batch(x, y, masks, mixup_alpha=0.4)
    lam = mixed.lam
    assert 0.0 < lam < 1.0
    partner = ((mixed.x[:, 0, 0, 0] - lam * x[:, 0, 0, 0]) / (1 - lam)).round().long()  # which image each was mixed with
    assert torch.equal(mixed.y_b, y[partner]) and torch.equal(mixed.y_a, y)
    assert sorted(partner.tolist()) == list(range(8))  # a permutation of the batch
    for i, j in enumerate(partner.tolist()):
        if 7 in (i, j):  # either mask unknown: the mixed mask is unknown
            assert (mixed.masks[i] == -1).all()
        else:
            assert torch.allclose(mixed.masks[i], lam * masks[i] + (1 - lam) * masks[j])


def test_cutmix_pastes_one_box_into_image_and_mask_and_lam_is_the_untouched_share():
    torch.manual_seed(3)
    x, y, masks = _batch(size=32)
    masks[-1] = 0.0  # all known here
    mixed = mix_batch(x, y, masks, cutmix_alpha=1.0)
    changed = mixed.x[:, 0] != x[:, 0]
    boxes = changed.any(dim=0)  # the same box in every image
    share = 1 - boxes.float().mean().item()
    assert mixed.lam == pytest.approx(share, abs=1e-6) and 0 < share < 1
    rows, cols = torch.nonzero(boxes, as_tuple=True)
    assert boxes[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
    inside = boxes[None].expand(8, -1, -1)
    partner = mixed.x[:, 0][inside].view(8, -1)[:, 0].long()
    assert torch.equal(mixed.y_b, y[partner])
    assert torch.equal(mixed.masks[:, 0][~inside], masks[:, 0][~inside])
    assert torch.equal(mixed.masks[:, 0][inside].view(8, -1), masks[partner, 0][inside].view(8, -1))


def test_negative_alpha_is_refused_by_the_function_and_the_module():
    x, y, _ = _batch()
    with pytest.raises(ValueError, match=">= 0"):
        mix_batch(x, y, mixup_alpha=-0.1)
    with pytest.raises(ValueError, match="model.mixing"):
        SkinTumorClassifier(list(CLASSES), net=NET, class_counts=[1, 1, 1], image_size=32, mixing={"mixup": 0.2})


def test_mixed_training_step_gives_the_mixed_loss():
    """With lam known, the module's training loss is lam * L(y_a) + (1 - lam) * L(y_b) of the mixed images."""
    model = SkinTumorClassifier(list(CLASSES), net=NET, loss={"alpha": None}, class_counts=[1, 1, 1], image_size=32,
                                mixing={"mixup_alpha": 0.4})
    model.log = lambda *a, **k: None  # no trainer here
    model.model.eval()  # BatchNorm with running statistics: the same network for both computations
    x, y = torch.randn(6, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(1)
    expected = mix_batch(x, y, mixup_alpha=0.4)
    with torch.no_grad():
        logits = model.model(expected.x)
    want = expected.lam * model.criterion(logits, y) + (1 - expected.lam) * model.criterion(logits, expected.y_b)
    torch.manual_seed(1)
    with torch.no_grad():
        got = model._step((x, y, torch.arange(6)), "train")[0]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_tiny_run_with_mixup_and_cutmix(tiny_folder, tmp_path):
    run_dir = tmp_path / "r"
    proc = train_tiny(tiny_folder, run_dir, "model.mixing.mixup_alpha=0.2", "model.mixing.cutmix_alpha=1.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pd.read_csv(run_dir / "predictions_test.csv").shape[0] > 0
    assert load_classifier(run_dir / "checkpoints" / "best.ckpt").hparams.mixing == {"mixup_alpha": 0.2,
                                                                                     "cutmix_alpha": 1.0}
