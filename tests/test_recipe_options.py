"""Recipe options (all off by default): balanced sampling, EMA, SWA, hflip TTA, gate spread logging,
the gates' lesion-mask loss."""

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from skintumor.data.datamodule import UltrasoundDataModule
from skintumor.models.checkpoint import load_classifier
from skintumor.models.module import SkinTumorClassifier

from conftest import CLASSES, REPO

NET = dict(attention=True)


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory) -> Path:
    """30 / 9 / 6 images of 32 px, each its own patient; class brightness differs."""
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(1)
    for c, (cls, n) in enumerate(zip(CLASSES, (30, 9, 6))):
        (root / cls).mkdir()
        for i in range(n):
            image = rng.normal(60 + 50 * c, 20, (32, 32)) + np.linspace(0, 40 * rng.random(), 32)[None, :]
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / cls / f"{cls}{i}.png")
    return root


def _datamodule(root, **kwargs) -> UltrasoundDataModule:
    dm = UltrasoundDataModule(source="folder", root=str(root), n_folds=3, image_size=32, batch_size=8, **kwargs)
    dm.setup()
    return dm


def _drawn_labels(dm, epochs: int) -> np.ndarray:
    loader = dm.train_dataloader()  # once, as Lightning does: the sampler's generator runs on across epochs
    return np.concatenate([y.numpy() for _ in range(epochs) for _, y, _ in loader])


def test_balanced_sampler_draws_classes_near_uniformly(imbalanced_folder):
    plain = _datamodule(imbalanced_folder)
    balanced = _datamodule(imbalanced_folder, sampler="balanced")
    labels_plain = _drawn_labels(plain, 10)
    shares_plain = np.bincount(labels_plain, minlength=3) / len(labels_plain)
    labels = _drawn_labels(balanced, 20)
    shares = np.bincount(labels, minlength=3) / len(labels)
    assert shares_plain[0] > 0.55  # the imbalance the sampler has to undo
    assert np.all(np.abs(shares - 1 / 3) < 0.08), shares
    assert len(balanced.train_dataloader().dataset) == len(plain.split.train)

    # seeded by sampler_seed: the same seed draws the same sequence; seed-ensemble members share the
    # folds' seed but not the sampler's, and must not draw the same batches
    def draws(sampler_seed):
        dm = _datamodule(imbalanced_folder, sampler="balanced", sampler_seed=sampler_seed)
        return np.concatenate([rows.numpy() for _, _, rows in dm.train_dataloader()])

    assert np.array_equal(draws(1), draws(1))
    assert not np.array_equal(draws(1), draws(2))
    torch.manual_seed(3)
    first = draws(None)
    torch.manual_seed(3)
    assert np.array_equal(first, draws(None))  # None: torch's global generator, as shuffling
    with pytest.raises(ValueError, match="sampler"):
        UltrasoundDataModule(source="folder", root=str(imbalanced_folder), sampler="uniform")


def _trainer(tmp_path, epochs=1) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_train_batches=2,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_hflip_tta_makes_predictions_mirror_invariant():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 32)
    mirror = torch.flip(x, dims=[-1])
    for tta, invariant in ((None, False), ("hflip", True)):
        torch.manual_seed(0)
        module = SkinTumorClassifier(list(CLASSES), net=NET, class_counts=[1, 1, 1], image_size=32, tta=tta).eval()
        with torch.no_grad():
            same = torch.allclose(module.predict_proba(x), module.predict_proba(mirror), atol=1e-6)
        assert same is invariant, tta
    with pytest.raises(ValueError, match="tta"):
        SkinTumorClassifier(list(CLASSES), class_counts=[1, 1, 1], tta="vflip")


@pytest.mark.parametrize("attention", [True, False])
def test_gate_spread_logged_for_attention_model_only(imbalanced_folder, tmp_path, attention):
    torch.manual_seed(0)
    dm = _datamodule(imbalanced_folder)
    module = SkinTumorClassifier(dm.classes, net=NET | {"attention": attention}, class_counts=[1, 1, 1], image_size=32)
    if attention:
        with torch.no_grad():
            for gate in (module.model.gate2, module.model.gate3):
                gate.psi.weight.mul_(50.0)
    trainer = _trainer(tmp_path)
    trainer.validate(module, datamodule=dm, verbose=False)
    metrics = trainer.callback_metrics
    for name in ("val/gate2_spread", "val/gate3_spread"):
        if attention:
            assert float(metrics[name]) > 0.01, name
        else:
            assert name not in metrics


# --- the gates' lesion-mask loss (model.loss.mask_weight) ----------------------------------------


def test_gate_mask_loss_rewards_pointing_at_the_lesion_and_skips_unknown_or_empty_masks():
    from skintumor.models.losses import gate_mask_loss

    mask = torch.zeros(4, 1, 32, 32)
    mask[0, :, 8:16, 8:16] = 1  # a lesion; image 1 empty (normal); image 2 unknown; image 3 a lesion
    mask[2] = -1
    mask[3, :, 0:8, 24:32] = 1
    target = torch.nn.functional.adaptive_avg_pool2d(mask.clamp(min=0), (4, 4))
    on_lesion = target.clamp(0.02, 0.98)
    off_lesion = (1 - target).clamp(0.02, 0.98)
    good, bad = on_lesion, off_lesion
    assert gate_mask_loss(good, mask) < gate_mask_loss(bad, mask)
    # images 1 and 2 do not count: changing their gates changes nothing
    other = good.clone()
    other[1:3] = torch.rand(2, 1, 4, 4)
    assert gate_mask_loss(other, mask) == pytest.approx(float(gate_mask_loss(good, mask)))
    nothing = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = gate_mask_loss(nothing, -torch.ones(2, 1, 32, 32))
    assert float(loss) == 0.0 and loss.requires_grad


def test_training_items_carry_masks_moved_with_the_image(tmp_path):
    """hflip moves image and mask together; rows without a mask get -1; val/test items have none."""
    import albumentations as A

    from skintumor.augment.compose import Augmentation
    from skintumor.data.manifest import Manifest

    rows = []
    for i in range(24):
        image = np.zeros((32, 32), np.uint8)
        image[4:12, 2:10] = 200  # a bright lesion on the left
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        mask_path = ""
        if i % 2 == 0:
            Image.fromarray((image > 0).astype(np.uint8) * 255).save(tmp_path / f"{i}_m.png")
            mask_path = f"{i}_m.png"
        rows.append({"path": f"{i}.png", "label": CLASSES[i % 3], "patient_id": f"p{i}", "mask_path": mask_path})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    dm = UltrasoundDataModule(
        manifest=Manifest.from_csv(tmp_path / "m.csv"),
        n_folds=2,
        val_fraction=0.34,
        image_size=32,
        batch_size=4,
        augment=Augmentation([A.HorizontalFlip(p=1.0)], seed=0),
    )
    dm.setup()
    x, y, row, m = next(iter(dm.train_dataloader()))
    for xi, ri, mi in zip(x, row, m):
        if int(ri) % 2 == 0:
            lesion = mi[0] > 0.5
            assert lesion[4:12, 22:30].all() and not lesion[:, :16].any()  # flipped to the right, with the image
            assert (xi[0][lesion] > xi[0][~lesion].max()).all()
        else:
            assert (mi == -1).all()
    assert len(next(iter(dm.val_dataloader()))) == 3


def test_mask_weight_is_ignored_with_a_warning_without_gates():
    with pytest.warns(UserWarning, match="mask_weight is ignored"):
        plain = SkinTumorClassifier(
            list(CLASSES),
            net=NET | {"attention": False},
            loss={"mask_weight": 1.0},
            class_counts=[1, 1, 1],
            image_size=32,
        )
    assert plain.mask_weight == 0.0
    with pytest.raises(ValueError, match="mask_weight must be >= 0"):
        SkinTumorClassifier(list(CLASSES), net=NET, loss={"mask_weight": -1.0}, class_counts=[1, 1, 1], image_size=32)


@pytest.mark.parametrize("model, attention", [(None, True), ("resnet18", False)])
def test_recipe_experiment_composes_and_model_override_wins(model, attention):
    """experiment=recipe sets the chosen recipe; `model=resnet18` beside it really turns the gates off."""
    overrides = ["experiment=recipe"] + ([f"model={model}"] if model else [])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.model.net.attention is attention
    assert cfg.data.image_size == 128 and cfg.data.sampler == "balanced" and cfg.model.loss.alpha is None
    assert cfg.model.loss.mask_weight == 1.0 and cfg.model.optimizer.name == "adamw"
    assert cfg.model.net.lesion_decoder is True and cfg.model.loss.lesion_weight == 1.0  # gates off keep it too
    assert cfg.model.scheduler.name == "cosine" and cfg.trainer.max_epochs == 60 and cfg.augment.name == "default"
    assert cfg.model.decision == "balanced"


def test_gate_mask_loss_runs_under_autocast_and_matches_bce():
    """Training with bf16 autocast must not trip over the loss (F.binary_cross_entropy would)."""
    from skintumor.models.losses import gate_mask_loss

    alpha = torch.rand(2, 1, 4, 4) * 0.9 + 0.05
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = gate_mask_loss(alpha, mask)
    target = torch.nn.functional.adaptive_avg_pool2d(mask, (4, 4))
    assert float(under_autocast) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy(alpha, target)), rel=1e-4
    )


def test_ensemble_members_share_folds_but_not_batches():
    """experiment=recipe_ensemble fixes the folds' seed; each member's sampler follows its own seed."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        members = [compose("train", overrides=["experiment=recipe_ensemble", f"seed={s}"]) for s in (1, 2)]
    assert [m.data.seed for m in members] == [42, 42]
    assert [m.data.sampler_seed for m in members] == [1, 2]
    # the members train as long as the single model (chosen on validation, RESULTS stage 11)
    assert [m.trainer.max_epochs for m in members] == [60, 60]
    assert [m.model.net.lesion_decoder for m in members] == [True, True]


# --- the lesion decoder (model.net.lesion_decoder, model.loss.lesion_weight) ------------------------


def test_lesion_mask_loss_rewards_outlining_the_lesion_and_counts_empty_masks():
    from skintumor.models.losses import lesion_mask_loss

    mask = torch.zeros(3, 1, 32, 32)
    mask[0, :, 8:16, 8:16] = 1  # image 0 a lesion, image 1 empty (normal), image 2 unknown
    mask[2] = -1
    target = torch.nn.functional.adaptive_avg_pool2d(mask.clamp(min=0), (8, 8))
    good, bad = 8 * (target - 0.5), 8 * (0.5 - target)  # logits
    assert lesion_mask_loss(good, mask) < lesion_mask_loss(bad, mask)
    off, on = good.clone(), good.clone()
    on[1] = 4.0  # the decoder sees a lesion in the normal scan
    assert lesion_mask_loss(off, mask) < lesion_mask_loss(on, mask)
    other = good.clone()
    other[2] = torch.randn(1, 8, 8)  # unknown masks count for nothing
    assert float(lesion_mask_loss(other, mask)) == pytest.approx(float(lesion_mask_loss(good, mask)))
    nothing = torch.zeros(2, 1, 8, 8, requires_grad=True)
    loss = lesion_mask_loss(nothing, -torch.ones(2, 1, 32, 32))
    loss.backward()
    assert float(loss) == 0.0 and nothing.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training must not trip over it
        assert torch.isfinite(lesion_mask_loss(good.bfloat16(), mask))


@pytest.mark.parametrize("attention", [True, False])
def test_lesion_decoder_outlines_the_lesion_and_leaves_the_decision_alone(attention):
    """Shapes, the decision path skips the decoder, and the trunk + decoder learn to find a lesion."""
    from skintumor.models.attention_resnet import AttentionGatedResNet18
    from skintumor.models.losses import lesion_mask_loss

    torch.manual_seed(0)
    net = AttentionGatedResNet18(3, attention=attention, lesion_decoder=True)
    cells = 64 // 8
    plain = AttentionGatedResNet18(3, attention=attention)
    x = torch.randn(8, 1, 64, 64) * 0.3
    mask = torch.zeros(8, 1, 64, 64)
    for i in range(8):  # a bright square at a different place in each image
        r, c = 8 * (i % 4) + 4, 8 * (i // 4) + 16
        x[i, :, r : r + 16, c : c + 16] += 2.0
        mask[i, :, r : r + 16, c : c + 16] = 1
    net.eval(), plain.eval()
    assert net.forward_details(x).lesion_logits.shape == (8, 1, cells, cells)
    assert net.forward_details(x, lesion=False).lesion_logits is None
    assert plain.forward_details(x).lesion_logits is None
    assert torch.equal(net(x), net.forward_details(x).logits)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = lesion_mask_loss(net.forward_details(x).lesion_logits, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert net.conv1.weight.grad.abs().sum() > 0  # the dense supervision reaches the trunk
    net.eval()
    with torch.no_grad():
        p = torch.sigmoid(net.forward_details(x).lesion_logits)
    inside = torch.nn.functional.adaptive_avg_pool2d(mask, (cells, cells)) > 0.5
    assert losses[-1] < 0.5 * losses[0]
    assert p[inside].mean() > 0.7 and p[~inside].mean() < 0.3


def _masked_datamodule(root: Path, n: int) -> UltrasoundDataModule:
    """n 32 px images, each its own patient, with a bright square lesion (brighter per class) and its mask."""
    from skintumor.data.manifest import Manifest

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.normal(60, 10, (32, 32))
        r, c = rng.integers(2, 20, 2)
        image[r : r + 10, c : c + 10] += 40 + 40 * (i % 3)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"{i}.png")
        lesion = np.zeros((32, 32), np.uint8)
        lesion[r : r + 10, c : c + 10] = 255
        Image.fromarray(lesion).save(root / f"{i}_m.png")
        rows.append({"path": f"{i}.png", "label": CLASSES[i % 3], "patient_id": f"p{i}", "mask_path": f"{i}_m.png"})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    dm = UltrasoundDataModule(
        manifest=Manifest.from_csv(root / "m.csv"), n_folds=2, val_fraction=0.34, image_size=32, batch_size=4
    )
    dm.setup()
    return dm


def test_lesion_weight_is_checked_and_a_trained_decoder_reloads(tmp_path):
    """A short fit on masked images logs the decoder's and the gates' mask losses; the checkpoint
    rebuilds the decoder."""
    with pytest.raises(ValueError, match="lesion_weight must be >= 0"):
        SkinTumorClassifier(list(CLASSES), net=NET, loss={"lesion_weight": -1.0}, class_counts=[1, 1, 1], image_size=32)
    dm = _masked_datamodule(tmp_path, 24)
    module = SkinTumorClassifier(
        list(CLASSES), net=NET | {"lesion_decoder": True}, loss={"alpha": None, "mask_weight": 1.0}, image_size=32
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, dm)
    for name in ("train/lesion_loss", "train/mask_loss"):
        assert torch.isfinite(trainer.logged_metrics[name]), name
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    reloaded = load_classifier(tmp_path / "last.ckpt")
    assert reloaded.model.lesion_decoder is not None
    x = next(iter(dm.val_dataloader()))[0]
    module.eval()
    assert torch.allclose(reloaded.predict_proba(x), module.predict_proba(x), atol=1e-6)
