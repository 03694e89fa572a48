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

from conftest import CLASSES, REPO, train_tiny
from skintumor.data.datamodule import UltrasoundDataModule
from skintumor.errors import ConfigError
from skintumor.models.module import SkinTumorClassifier, load_classifier

NET = dict(attention=True, aggregation="ft", normalization="sigmoid")


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
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     limit_train_batches=2, limit_val_batches=2, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def test_ema_is_validated_and_checkpointed(imbalanced_folder, tmp_path):
    torch.manual_seed(0)
    dm = _datamodule(imbalanced_folder)
    module = SkinTumorClassifier(dm.classes, net=NET, class_counts=dm.class_counts("train"), image_size=32,
                                 optimizer=dict(lr=1e-3), ema_decay=0.9)
    assert module.eval_model() is module.ema.module
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=dm)
    raw = module.model.state_dict()
    ema = module.ema.module.state_dict()
    assert int(module.ema.n_averaged) == trainer.global_step > 0
    assert any(not torch.allclose(raw[k].float(), ema[k].float()) for k in raw if raw[k].is_floating_point())
    # the optimiser trains the raw weights only
    assert all(p.requires_grad is False for p in module.ema.parameters())
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_classifier(path)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, ema[key]), key
    # the probabilities validation computed are those of the EMA network, and the reloaded model gives them too
    x = next(iter(dm.val_dataloader()))[0]
    module.eval()
    with torch.no_grad():
        expected = torch.softmax(module.ema.module(x), dim=1)
        assert torch.allclose(module.predict_proba(x), expected, atol=1e-6)
        assert torch.allclose(torch.softmax(loaded(x), dim=1), expected, atol=1e-5)
        assert not torch.allclose(module.model(x), module.ema.module(x), atol=1e-4)  # raw != averaged


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
    for name in ("val/gate2_spread", "val/gate3_spread", "val/gate2_cv", "val/gate3_cv"):
        if attention:
            assert float(metrics[name]) > 0.01, name
        else:
            assert name not in metrics


def test_gate_cv_is_scale_free_and_zero_for_a_constant_gate(imbalanced_folder, tmp_path):
    """A constant gate (psi weights 0) has cv 0; a softmax gate's cv is its std over its mean (1 / positions)."""
    dm = _datamodule(imbalanced_folder)
    cvs = {}
    for norm, scale in (("sigmoid", 0.0), ("softmax", 0.0), ("softmax", 50.0)):
        torch.manual_seed(0)
        module = SkinTumorClassifier(dm.classes, net=NET | {"normalization": norm}, class_counts=[1, 1, 1], image_size=32)
        with torch.no_grad():
            for gate in (module.model.gate2, module.model.gate3):
                gate.psi.weight.mul_(scale)
        trainer = _trainer(tmp_path / f"{norm}{scale}")
        trainer.validate(module, datamodule=dm, verbose=False)
        cvs[(norm, scale)] = (float(trainer.callback_metrics["val/gate2_cv"]),
                              float(trainer.callback_metrics["val/gate2_spread"]))
    assert cvs[("sigmoid", 0.0)][0] == pytest.approx(0.0, abs=1e-5)
    assert cvs[("softmax", 0.0)][0] == pytest.approx(0.0, abs=1e-4)
    cv, spread = cvs[("softmax", 50.0)]
    # a softmax map over the 4x4 grid of gate2 (32 px / 8) has mean 1/16, so cv = 16 x its std
    assert cv > 0.1 and cv == pytest.approx(16 * spread, rel=1e-3)


def test_swa_config_composes():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["callbacks=swa"])
        default = compose(config_name="train")
    assert cfg.callbacks.swa._target_.endswith("StochasticWeightAveraging")
    assert cfg.callbacks.swa.swa_lrs > 0 and 0 < cfg.callbacks.swa.swa_epoch_start
    assert "model_checkpoint" in cfg.callbacks
    # every recipe option is off by default
    assert default.data.sampler is None and default.model.ema_decay is None and default.model.tta is None
    assert "swa" not in default.callbacks


def test_swa_two_epoch_tiny_run_finishes(imbalanced_folder, tmp_path):
    """The configured SWA callback, averaging from epoch 1 of 2, in a plain Trainer."""
    import hydra
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["callbacks=swa", "callbacks.swa.swa_epoch_start=1"])
    swa = hydra.utils.instantiate(cfg.callbacks.swa)
    torch.manual_seed(0)
    dm = _datamodule(imbalanced_folder)
    module = SkinTumorClassifier(dm.classes, net=NET, class_counts=dm.class_counts("train"), image_size=32)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False, callbacks=[swa])
    trainer.fit(module, datamodule=dm)
    assert trainer.current_epoch >= 2 and swa.n_averaged is not None and int(swa.n_averaged) >= 1
    assert "val/auroc_macro" in trainer.callback_metrics


@pytest.mark.slow
def test_tiny_run_with_recipe_options(tiny_folder, tmp_path):
    """callbacks=swa + balanced sampler + EMA + TTA through the entry point, 2 epochs at 32 px."""
    run_dir = tmp_path / "r"
    proc = train_tiny(tiny_folder, run_dir, "callbacks=swa", "callbacks.swa.swa_epoch_start=1", "data.sampler=balanced",
                      "model.ema_decay=0.9", "model.tta=hflip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "predictions_test.csv").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv")
    assert logged["val/gate2_spread"].notna().any()
    assert load_classifier(run_dir / "checkpoints" / "best.ckpt").hparams.ema_decay == 0.9


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
    for norm in ("sigmoid", "softmax"):
        good, bad = on_lesion, off_lesion
        if norm == "softmax":
            good, bad = good / good.sum((2, 3), keepdim=True), bad / bad.sum((2, 3), keepdim=True)
        assert gate_mask_loss(good, mask, norm) < gate_mask_loss(bad, mask, norm)
        # images 1 and 2 do not count: changing their gates changes nothing
        other = good.clone()
        other[1:3] = torch.rand(2, 1, 4, 4)
        assert gate_mask_loss(other, mask, norm) == pytest.approx(float(gate_mask_loss(good, mask, norm)))
    nothing = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = gate_mask_loss(nothing, -torch.ones(2, 1, 32, 32))
    assert float(loss) == 0.0 and loss.requires_grad


def test_gate_mask_loss_can_teach_gates_to_stay_off_where_the_mask_is_empty():
    """empty_is_background: an empty mask (BUSI's normal images) counts, as "no lesion anywhere"."""
    from skintumor.models.losses import gate_mask_loss

    mask = torch.zeros(3, 1, 32, 32)
    mask[0, :, 8:16, 8:16] = 1  # image 0 a lesion, image 1 empty, image 2 unknown
    mask[2] = -1
    gates = torch.full((3, 1, 4, 4), 0.5)
    gates[0] = torch.nn.functional.adaptive_avg_pool2d(mask[0:1].clamp(min=0), (4, 4))[0].clamp(0.02, 0.98)
    off, on = gates.clone(), gates.clone()
    off[1], on[1] = 0.02, 0.98  # the empty image's gate: off everywhere vs on everywhere
    assert gate_mask_loss(off, mask, empty_is_background=True) < gate_mask_loss(on, mask, empty_is_background=True)
    assert float(gate_mask_loss(off, mask)) == pytest.approx(float(gate_mask_loss(on, mask)))  # default: skipped
    other = off.clone()
    other[2] = torch.rand(1, 4, 4)  # unknown masks still count for nothing
    assert float(gate_mask_loss(other, mask, empty_is_background=True)) == pytest.approx(
        float(gate_mask_loss(off, mask, empty_is_background=True)))
    with pytest.raises(ValueError, match="sigmoid"):
        gate_mask_loss(off, mask, "softmax", empty_is_background=True)
    with pytest.raises(ValueError, match="empty_mask"):
        SkinTumorClassifier(list(CLASSES), net=NET, loss={"empty_mask": "ignore"}, class_counts=[1, 1, 1], image_size=32)
    with pytest.raises(ValueError, match="sigmoid gates"):
        SkinTumorClassifier(list(CLASSES), net=NET | {"normalization": "softmax"}, loss={"empty_mask": "background"},
                            class_counts=[1, 1, 1], image_size=32)


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
    dm = UltrasoundDataModule(manifest=Manifest.from_csv(tmp_path / "m.csv"), n_folds=2, val_fraction=0.34,
                              image_size=32, batch_size=4, augment=Augmentation([A.HorizontalFlip(p=1.0)], seed=0))
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
        plain = SkinTumorClassifier(list(CLASSES), net=NET | {"attention": False}, loss={"mask_weight": 1.0},
                                    class_counts=[1, 1, 1], image_size=32)
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
    assert float(under_autocast) == pytest.approx(float(torch.nn.functional.binary_cross_entropy(alpha, target)),
                                                  rel=1e-4)


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


@pytest.mark.parametrize("attention, stride", [(True, 8), (False, 8), (True, 4)])
def test_lesion_decoder_outlines_the_lesion_and_leaves_the_decision_alone(attention, stride):
    """Shapes, the decision path skips the decoder, and the trunk + decoder learn to find a lesion
    (stride 4: the finer decoder, from layer1, outlines at twice the resolution)."""
    from skintumor.models.attention_resnet import AttentionGatedResNet18
    from skintumor.models.losses import lesion_mask_loss

    torch.manual_seed(0)
    net = AttentionGatedResNet18(3, attention=attention, lesion_decoder=True, lesion_decoder_stride=stride)
    cells = 64 // stride
    plain = AttentionGatedResNet18(3, attention=attention)
    x = torch.randn(8, 1, 64, 64) * 0.3
    mask = torch.zeros(8, 1, 64, 64)
    for i in range(8):  # a bright square at a different place in each image
        r, c = 8 * (i % 4) + 4, 8 * (i // 4) + 16
        x[i, :, r:r + 16, c:c + 16] += 2.0
        mask[i, :, r:r + 16, c:c + 16] = 1
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


def test_lesion_decoder_stride_is_checked_and_only_stride_4_reads_layer1():
    from skintumor.models.attention_resnet import AttentionGatedResNet18

    with pytest.raises(ConfigError, match="lesion_decoder_stride must be 8 .* or 4"):
        AttentionGatedResNet18(3, lesion_decoder=True, lesion_decoder_stride=16)
    coarse = AttentionGatedResNet18(3, lesion_decoder=True)
    fine = AttentionGatedResNet18(3, lesion_decoder=True, lesion_decoder_stride=4)
    assert coarse.lesion_decoder.lateral1 is None and fine.lesion_decoder.lateral1 is not None
    # a decoder checkpoint from before the option (stride 8) has no layer1 lateral: it loads strictly
    assert not any("lateral1" in k for k in coarse.state_dict())
    f1 = {}
    fine.layer1.register_forward_hook(lambda module, inputs, output: f1.setdefault("f1", output))
    fine.lesion_decoder.lateral1.register_forward_hook(lambda module, inputs, output: f1.setdefault("in", inputs[0]))
    fine.eval().forward_details(torch.randn(2, 1, 64, 64))
    assert torch.equal(f1["in"], f1["f1"])  # the finest lateral reads layer1's output


def test_lesion_class_loss_counts_only_lesion_cells_and_rewards_the_right_class():
    from skintumor.models.losses import lesion_class_loss

    mask = torch.zeros(3, 1, 32, 32)
    mask[0, :, 0:16, 0:16] = 1   # image 0: a lesion in the top-left quarter
    mask[2] = -1                 # image 1: empty (normal), image 2: unknown
    labels = torch.tensor([1, 2, 0])
    logits = torch.zeros(3, 3, 4, 4)
    logits[0, 1, :2, :2] = 5.0   # the lesion's cells say class 1
    right = lesion_class_loss(logits, mask, labels)
    assert float(right) < 0.05
    assert lesion_class_loss(logits, mask, torch.tensor([2, 2, 0])) > 1.0  # the wrong label costs
    other = logits.clone()
    other[0, :, 2:, 2:] = torch.randn(3, 2, 2) * 10  # background cells
    other[1:] = torch.randn(2, 3, 4, 4) * 10         # the normal and the unknown image
    assert float(lesion_class_loss(other, mask, labels)) == pytest.approx(float(right))
    nothing = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss = lesion_class_loss(nothing, torch.zeros(2, 1, 32, 32), torch.tensor([0, 1]))
    loss.backward()
    assert float(loss) == 0.0 and nothing.grad is not None


def test_lesion_decoder_classes_add_class_logits_per_cell():
    """net.lesion_decoder_classes: (B, C, h, w) class logits beside the lesion logit (the module's
    training adds their loss: the reload test below)."""
    from skintumor.models.attention_resnet import AttentionGatedResNet18

    net = AttentionGatedResNet18(3, lesion_decoder=True, lesion_decoder_stride=4, lesion_decoder_classes=True).eval()
    out = net.forward_details(torch.randn(2, 1, 64, 64))
    assert out.lesion_logits.shape == (2, 1, 16, 16) and out.lesion_class_logits.shape == (2, 3, 16, 16)
    plain_decoder = AttentionGatedResNet18(3, lesion_decoder=True).eval()
    assert plain_decoder.forward_details(torch.randn(1, 1, 64, 64)).lesion_class_logits is None
    with pytest.raises(ConfigError, match="lesion_class_weight must be >= 0"):
        SkinTumorClassifier(list(CLASSES), net=NET, loss={"lesion_class_weight": -1.0}, class_counts=[1, 1, 1], image_size=32)

    def module(net: dict, **loss) -> SkinTumorClassifier:
        return SkinTumorClassifier(list(CLASSES), net=NET | net, loss={"alpha": None} | loss, image_size=32)

    # the decoder runs in training only where one of its losses counts
    assert module({"lesion_decoder": True}).decoder_trains
    assert not module({"lesion_decoder": True}, lesion_weight=0.0).decoder_trains
    assert module({"lesion_decoder": True, "lesion_decoder_classes": True}, lesion_weight=0.0).decoder_trains
    assert not module({"lesion_decoder": True, "lesion_decoder_classes": True}, lesion_weight=0.0,
                      lesion_class_weight=0.0).decoder_trains


def _masked_datamodule(root: Path, n: int) -> UltrasoundDataModule:
    """n 32 px images, each its own patient, with a bright square lesion (brighter per class) and its mask."""
    from skintumor.data.manifest import Manifest

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.normal(60, 10, (32, 32))
        r, c = rng.integers(2, 20, 2)
        image[r:r + 10, c:c + 10] += 40 + 40 * (i % 3)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"{i}.png")
        lesion = np.zeros((32, 32), np.uint8)
        lesion[r:r + 10, c:c + 10] = 255
        Image.fromarray(lesion).save(root / f"{i}_m.png")
        rows.append({"path": f"{i}.png", "label": CLASSES[i % 3], "patient_id": f"p{i}", "mask_path": f"{i}_m.png"})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    dm = UltrasoundDataModule(manifest=Manifest.from_csv(root / "m.csv"), n_folds=2, val_fraction=0.34, image_size=32,
                              batch_size=4)
    dm.setup()
    return dm


@pytest.mark.parametrize("classes, mixing", [(False, None), (True, None), (True, {"cutmix_alpha": 1.0})])
def test_lesion_weight_is_checked_and_a_trained_decoder_reloads(tmp_path, classes, mixing):
    """A short fit on masked images logs the decoder's loss (and its class loss, with class logits,
    mixed batches too); the checkpoint rebuilds the decoder."""
    with pytest.raises(ValueError, match="lesion_weight must be >= 0"):
        SkinTumorClassifier(list(CLASSES), net=NET, loss={"lesion_weight": -1.0}, class_counts=[1, 1, 1], image_size=32)
    dm = _masked_datamodule(tmp_path, 24)
    module = SkinTumorClassifier(list(CLASSES), net=NET | {"lesion_decoder": True, "lesion_decoder_classes": classes},
                                 loss={"alpha": None}, image_size=32, mixing=mixing)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert "train/lesion_loss" in trainer.logged_metrics
    assert ("train/lesion_class_loss" in trainer.logged_metrics) == classes
    if classes:
        assert torch.isfinite(trainer.logged_metrics["train/lesion_class_loss"])
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    reloaded = load_classifier(tmp_path / "last.ckpt")
    assert reloaded.model.lesion_decoder is not None
    x = next(iter(dm.val_dataloader()))[0]
    module.eval()
    assert torch.allclose(reloaded.predict_proba(x), module.predict_proba(x), atol=1e-6)


# --- the lesion zoom (model.net.lesion_zoom) -------------------------------------------------------

def test_lesion_boxes_frame_the_found_lesion_and_fall_back_to_the_whole_image():
    from skintumor.models.lesion_zoom import crop_boxes, lesion_boxes

    logits = torch.full((3, 1, 16, 16), -5.0)
    logits[0, 0, 4:8, 6:10] = 5.0    # a 4 x 4 cell lesion: a quarter of the image's side
    logits[2, 0, 14:16, 14:16] = 5.0  # a small lesion in the corner
    boxes = lesion_boxes(logits, margin=1.5, min_side=0.25)
    torch.testing.assert_close(boxes[0], torch.tensor([0.5, 0.375, 0.375]))  # grown by the margin
    torch.testing.assert_close(boxes[1], torch.tensor([0.5, 0.5, 1.0]))      # nothing found: everything
    torch.testing.assert_close(boxes[2], torch.tensor([0.875, 0.875, 0.25]))  # at least min_side, inside the image
    ramp = torch.arange(128.0).view(1, 1, 1, 128).expand(3, 1, 128, 128)
    crops = crop_boxes(ramp, boxes, 96)
    assert crops.shape == (3, 1, 96, 96)
    # the crop spans the box: columns 40..88 of the ramp for image 0, all of it for image 1
    assert crops[0, 0, 0, 0] == pytest.approx(40, abs=0.5) and crops[0, 0, 0, -1] == pytest.approx(88, abs=1)
    assert crops[1, 0, 0, 0] == pytest.approx(0, abs=0.5) and crops[1, 0, 0, -1] == pytest.approx(127, abs=0.5)
    assert crops[2, 0, 0, -1] == pytest.approx(127, abs=1)


def test_lesion_zoom_averages_a_second_look_at_the_crop_and_needs_a_learning_decoder():
    from skintumor.models.attention_resnet import AttentionGatedResNet18
    from skintumor.models.lesion_zoom import crop_boxes

    with pytest.raises(ConfigError, match="lesion_zoom needs lesion_decoder"):
        AttentionGatedResNet18(3, lesion_zoom=48)
    with pytest.raises(ConfigError, match="lesion_zoom needs a decoder that learns"):
        SkinTumorClassifier(list(CLASSES), net=NET | {"lesion_decoder": True, "lesion_zoom": 48},
                            loss={"alpha": None, "lesion_weight": 0.0}, image_size=64)
    torch.manual_seed(0)
    net = AttentionGatedResNet18(3, lesion_decoder=True, lesion_zoom=48).eval()
    x = torch.randn(2, 1, 64, 64)
    blob = torch.full((2, 1, 8, 8), -5.0)
    blob[0, :, 2:4, 2:4] = 5.0  # image 0: a lesion up left; image 1: none
    net.lesion_decoder.forward = lambda *features: blob
    out = net.forward_details(x)
    crops = crop_boxes(x, out.zoom_boxes, 48)
    expected = (net.view_details(x).logits + net.view_details(crops).logits) / 2
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(net(x), expected)  # the decision path zooms too (the decoder runs for it)
    assert out.zoom_boxes[1, 2] == 1.0 and out.zoom_boxes[0, 2] < 1.0
    assert out.lesion_logits.shape == (2, 1, 8, 8) and net.forward_details(x, lesion=False).lesion_logits is None
    assert out.attention["gate2"].shape[-1] == 8  # the maps stay the whole image's


def test_a_lesion_zoom_model_trains_logs_its_zoom_reloads_and_explain_refuses_it(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from skintumor.data.manifest import DataError
    from skintumor.explain import run as explain

    dm = _masked_datamodule(tmp_path, 18)
    module = SkinTumorClassifier(list(CLASSES), net=NET | {"lesion_decoder": True, "lesion_zoom": 32},
                                 loss={"alpha": None}, image_size=32)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert "train/lesion_loss" in trainer.logged_metrics
    side = float(trainer.logged_metrics["val/zoom_side"])
    assert 0.25 <= side <= 1.0
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    reloaded = load_classifier(tmp_path / "last.ckpt")
    assert reloaded.model.lesion_zoom == 32
    x = next(iter(dm.val_dataloader()))[0]
    module.eval()
    assert torch.allclose(reloaded.predict_proba(x), module.predict_proba(x), atol=1e-6)
    # the CAMs of a layer the trunk passes twice would mix the two views: a clear refusal, not a wrong map
    monkeypatch.setattr(explain.FinishedRun, "open", lambda run_dir: SimpleNamespace(classifier=reloaded, rows={"test": [0]}))
    with pytest.raises(DataError, match="zoomed crop .*lesion_zoom=32"):
        explain.explain_run(tmp_path / "run", tmp_path / "explain")


# --- the stem without its max-pool (model.net.stem_pool) -------------------------------------------

def test_without_the_stem_pool_every_map_is_twice_as_fine_and_the_model_trains_and_reloads(tmp_path):
    from skintumor.models.attention_resnet import AttentionGatedResNet18

    torch.manual_seed(0)
    pooled = AttentionGatedResNet18(3, lesion_decoder=True)
    fine = AttentionGatedResNet18(3, lesion_decoder=True, stem_pool=False)
    x = torch.randn(2, 1, 64, 64)
    for coarse_map, fine_map in zip(pooled.pyramid(x), fine.pyramid(x)):
        assert fine_map.shape[-2:] == tuple(2 * s for s in coarse_map.shape[-2:])
    assert fine.pyramid(x)[-1].shape == (2, 512, 4, 4)  # layer4 at H/16
    out = fine.forward_details(x)
    assert out.attention["gate2"].shape == (2, 1, 16, 16) and out.lesion_logits.shape == (2, 1, 16, 16)
    # the same weights (the pool has none): a trunk trained either way loads into the other
    fine.load_state_dict(pooled.state_dict())
    fine.eval(), pooled.eval()
    assert not torch.allclose(fine(x), pooled(x))  # ... and the pool is really gone from the path

    dm = _masked_datamodule(tmp_path, 18)
    module = SkinTumorClassifier(list(CLASSES), net=NET | {"lesion_decoder": True, "stem_pool": False},
                                 loss={"alpha": None}, image_size=32)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert torch.isfinite(trainer.logged_metrics["train/lesion_loss"])
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    reloaded = load_classifier(tmp_path / "last.ckpt")
    assert isinstance(reloaded.model.maxpool, torch.nn.Identity)
    batch = next(iter(dm.val_dataloader()))[0]
    module.eval()
    assert torch.allclose(reloaded.predict_proba(batch), module.predict_proba(batch), atol=1e-6)


def test_stem_pool_is_a_config_option_and_on_by_default():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=recipe"])
        assert cfg.model.net.stem_pool is True
        cfg = compose(config_name="train", overrides=["experiment=recipe", "model.net.stem_pool=false"])
        assert cfg.model.net.stem_pool is False
