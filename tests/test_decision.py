"""Class offsets for the decision, chosen on the inner validation split (model.decision=balanced)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from skintumor.errors import DataError
from skintumor.evaluate.finished_run import FinishedRun
from skintumor.evaluate.metrics import classification_metrics
from skintumor.models.checkpoint import load_classifier
from skintumor.models.decision import balanced_accuracy, balanced_offsets, cross_fitted, shift_probabilities
from skintumor.models.module import SkinTumorClassifier

from conftest import CLASSES

NET = dict(attention=True)


def _leaning_model(n=60, seed=0):
    """Labels 0/1/2 (20 each) and probabilities that rank them well but lean towards class 0."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n // 3)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), y] += 1.0
    logits[:, 0] += 1.2  # the lean: most class-1 and class-2 images end up as class 0
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_offsets_undo_a_lean_towards_one_class():
    y, p = _leaning_model()
    offsets = balanced_offsets(y, p)
    assert offsets[0] == 0 and (offsets[1:] > 0.5).all()
    assert balanced_accuracy(y, shift_probabilities(p, offsets)) > balanced_accuracy(y, p) + 0.3
    shifted = shift_probabilities(p, offsets)
    assert np.allclose(shifted.sum(1), 1) and (shifted > 0).all()


def test_a_balanced_model_keeps_zero_offsets():
    y = np.repeat([0, 1, 2], 10)
    p = np.full((30, 3), 0.1)
    p[np.arange(30), y] = 0.8  # every image right by a wide margin: no offset can do better
    assert np.array_equal(balanced_offsets(y, p), np.zeros(3))
    assert np.allclose(shift_probabilities(p, np.zeros(3)), p)


def test_cross_fitted_offsets_come_from_the_other_half():
    y, p = _leaning_model(seed=1)
    honest = cross_fitted(y, p)
    assert np.allclose(honest.sum(1), 1)
    assert balanced_accuracy(y, honest) > balanced_accuracy(y, p) + 0.2  # the lean is real, both halves see it
    # pure noise: offsets fitted in-sample look better than they are; cross-fitted ones do not
    rng = np.random.default_rng(3)
    noise = rng.dirichlet(np.ones(3), 60)
    in_sample = balanced_accuracy(y, shift_probabilities(noise, balanced_offsets(y, noise)))
    assert balanced_accuracy(y, cross_fitted(y, noise)) < in_sample


def test_cross_fitted_halves_keep_each_patient_whole(monkeypatch):
    from skintumor.models import decision

    y, p = _leaning_model(seed=2)
    groups = np.arange(len(y)) // 3 * 3 + y  # patients of 3 views... of one class each
    choosers = []
    real = decision.balanced_offsets

    def recording(y_half, p_half, *args):
        choosers.append(len(y_half))
        return real(y_half, p_half, *args)

    monkeypatch.setattr(decision, "balanced_offsets", recording)
    shifted = cross_fitted(y, p, groups=groups)
    assert np.allclose(shifted.sum(1), 1) and sum(choosers) == len(y)
    # no patient is split: each half is a union of whole patients, so a patient's views are all shifted
    # by the same offsets (chosen on the other half)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        ratios = shifted[rows] / p[rows]
        assert np.allclose(ratios / ratios.sum(1, keepdims=True), ratios[0] / ratios[0].sum(), atol=1e-9)


def test_module_applies_its_offsets_and_rejects_unknown_decisions():
    module = SkinTumorClassifier(list(CLASSES), net=NET, class_counts=[1, 1, 1], image_size=32).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        plain = module.predict_proba(x)
        module.decision_offsets.copy_(torch.tensor([0.0, 1.0, -1.0]))
        shifted = module.predict_proba(x)
    assert torch.allclose(
        shifted,
        torch.as_tensor(shift_probabilities(plain.numpy(), np.array([0.0, 1.0, -1.0])), dtype=shifted.dtype),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="model.decision"):
        SkinTumorClassifier(list(CLASSES), net=NET, class_counts=[1, 1, 1], image_size=32, decision="threshold")


def test_evaluation_metrics_rank_the_scores_and_decide_with_the_offsets():
    """During validation and test, torchmetrics' AUROC ranks the probabilities before the offsets."""
    from skintumor.models.metrics import summarise

    torch.manual_seed(0)
    module = SkinTumorClassifier(list(CLASSES), net=NET, class_counts=[1, 1, 1], image_size=32).eval()
    module.log = lambda *a, **k: None  # no trainer here
    x, y = torch.randn(24, 1, 32, 32) * 3, torch.arange(24) % 3
    offsets = np.array([0.0, 2.0, -2.0])
    module.decision_offsets.copy_(torch.as_tensor(offsets))
    with torch.no_grad():
        module.on_test_epoch_start()
        module.test_step((x, y, torch.arange(24)), 0)
        online = summarise(module.metrics["test_metrics"].compute(), list(CLASSES))
    _, probs, scores = (torch.cat(part) for part in zip(*module._test_buffer))
    probs, scores = probs.numpy(), scores.numpy()
    np.testing.assert_allclose(shift_probabilities(scores, offsets), probs, atol=1e-5)
    offline = classification_metrics(y.numpy(), probs, list(CLASSES), scores=scores)
    for key in ("auroc_macro", "bal_acc", f"auroc_{CLASSES[2]}"):
        assert online[key] == pytest.approx(offline[key], abs=1e-6), key
    assert classification_metrics(y.numpy(), probs, list(CLASSES))["auroc_macro"] != pytest.approx(
        online["auroc_macro"], abs=1e-4
    )  # the offsets here do reorder images


def test_checkpoints_without_offsets_still_load(tmp_path):
    """Checkpoints written before `decision` existed: plain argmax (zero offsets)."""
    module = SkinTumorClassifier(list(CLASSES), net=NET, class_counts=[1, 1, 1], image_size=32)
    state = {k: v for k, v in module.state_dict().items() if k != "decision_offsets"}
    hp = {k: v for k, v in dict(module.hparams).items() if k != "decision"}
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "old.ckpt")
    loaded = load_classifier(tmp_path / "old.ckpt")
    assert loaded.hparams.decision == "argmax" and not loaded.decision_offsets.any()


def test_checkpoints_with_retired_options_load_when_they_were_off(tmp_path):
    """A checkpoint from before the rejected options were removed holds their keys: off, it loads;
    on, it is refused in one line naming the file and the option."""
    module = SkinTumorClassifier(list(CLASSES), net=NET, class_counts=[1, 1, 1], image_size=32)
    hp = dict(module.hparams)
    old = hp | {
        "net": hp["net"] | {"aggregation": "ft", "stem_pool": True, "lesion_zoom": 0, "dropout": 0.0},
        "loss": hp["loss"] | {"aux_weight": 0.4, "empty_mask": "skip", "lesion_class_weight": 1.0},
        "ema_decay": None,
        "mixing": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
    }
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": old}, tmp_path / "old.ckpt")
    loaded = load_classifier(tmp_path / "old.ckpt")
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in loaded.state_dict().items())
    old["net"]["lesion_zoom"] = 96
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": old}, tmp_path / "zoom.ckpt")
    with pytest.raises(DataError, match=r"zoom\.ckpt: trained with net\.lesion_zoom=96, a retired option"):
        load_classifier(tmp_path / "zoom.ckpt")


def test_training_chooses_offsets_on_validation_and_keeps_them(tiny_run):
    run_dir = tiny_run
    chosen = json.loads((run_dir / "metrics_val.json").read_text())
    stored = [chosen[f"decision_offset_{c}"] for c in CLASSES]
    run = FinishedRun.open(run_dir)
    model = run.classifier
    assert model.decision_offsets.tolist() == pytest.approx(stored) and stored[0] == 0
    # the stored offsets are the ones the validation split picks (not the test fold)
    assert model.choose_decision_offsets(run.loader("val", batch_size=8)).tolist() == pytest.approx(stored)
    preds = pd.read_csv(run_dir / "predictions_test.csv")
    assert preds[[f"p_{c}" for c in CLASSES]].sum(axis=1).round(4).eq(1).all()
    # the file keeps the network's probabilities as score_; the offsets turn them into p_ (the decision)
    assert any(stored), "this tiny run is expected to move the decision"
    p, scores = (preds[[f"{kind}_{c}" for c in CLASSES]].to_numpy() for kind in ("p", "score"))
    np.testing.assert_allclose(shift_probabilities(scores, np.array(stored)), p, atol=1e-4)
    assert (preds["pred"] == np.asarray(CLASSES)[p.argmax(1)]).all()
    # metrics_test.json: decisions from p_, AUROC from score_ (as the report computes them)
    y = preds["label"].map(CLASSES.index).to_numpy()
    tested = json.loads((run_dir / "metrics_test.json").read_text())
    offline = classification_metrics(y, p, list(CLASSES), scores=scores)
    for key in ("auroc_macro", "bal_acc", f"auroc_{CLASSES[1]}"):
        assert tested[f"test/{key}"] == pytest.approx(offline[key], abs=1e-4), key


def test_many_classes_use_coordinate_ascent_and_still_undo_a_lean():
    """Six classes: the full grid would be 31^5 points; the search must stay quick and still help."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(6), 30)
    logits = rng.normal(0, 0.4, (len(y), 6))
    logits[np.arange(len(y)), y] += 1.0
    logits[:, 0] += 1.5  # the lean towards class 0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    offsets = balanced_offsets(y, p)
    assert offsets[0] == 0 and offsets.shape == (6,)
    assert balanced_accuracy(y, shift_probabilities(p, offsets)) > balanced_accuracy(y, p) + 0.15
