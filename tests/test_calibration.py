"""Calibration (Brier, class-wise ECE, temperature scaling) and split-conformal prediction sets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from sklearn.metrics import brier_score_loss
from torch import nn

from skintumor.deploy.bundle import export_bundle, load_bundle
from skintumor.deploy.predict import Predictor, collect_inputs, predictions_table
from skintumor.evaluate.conformal import COVERAGES, METHODS, aps_scores, calibrate, coverage_summary, prediction_sets
from skintumor.evaluate.metrics import (
    bootstrap_weights,
    calibration_intervals,
    calibration_metrics,
    expected_calibration_error,
    weighted_calibration,
)
from skintumor.evaluate.report import build_report
from skintumor.evaluate.summary import untempered
from skintumor.models.checkpoint import load_classifier
from skintumor.models.module import N_CONFORMAL, DecisionPath, SkinTumorClassifier

CLASSES = ["cyst", "lipoma", "pilo"]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def draw(n: int, rng: np.random.Generator, sharpness: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from the model's own probabilities softmax(z) (a calibrated model); the model
    reports softmax(sharpness * z) (sharpness > 1: overconfident). -> (y, reported probabilities)."""
    z = rng.normal(scale=1.5, size=(n, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z)])
    return y, softmax(sharpness * z)


# --- metrics -----------------------------------------------------------------------------------


def test_brier_and_classwise_ece_by_hand_and_under_weights():
    y = np.array([0, 1, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    m = calibration_metrics(y, probs, n_bins=2)
    assert m["brier"] == pytest.approx(brier_score_loss(y, probs, labels=[0, 1, 2], scale_by_half=False))
    assert m["brier"] == pytest.approx(np.mean(((probs - np.eye(3)[y]) ** 2).sum(1)))
    assert m["ece"] == pytest.approx(expected_calibration_error(y, probs, n_bins=2))
    # class-wise, 2 bins, |sum outcome - sum p| per bin: class 0 p {.2 .1 | .9 .6}, outcomes {0 0 | 1 0} -> .3 + .5;
    # class 1 {.05 .3 .1 | .7}, {0 1 0 | 1} -> .55 + .3; class 2 {.05 .1 .1 | .8}, {0 0 0 | 1} -> .25 + .2; / 4 images
    assert m["ece_classwise"] == pytest.approx((0.8 + 0.85 + 0.45) / 3 / 4)
    weighted = weighted_calibration(y, probs, np.array([[2.0, 0, 1, 1]]), n_bins=2)  # = rows 0, 0, 2, 3
    for name, value in calibration_metrics(y[[0, 0, 2, 3]], probs[[0, 0, 2, 3]], n_bins=2).items():
        assert weighted[name][0] == pytest.approx(value), name


@pytest.mark.parametrize("sharpness", [1.0, 2.0])  # calibrated (ECE mostly its own bias) and overconfident
def test_calibration_intervals_contain_the_estimate(sharpness):
    rng = np.random.default_rng(0)
    y, probs = draw(300, rng, sharpness=sharpness)
    groups = rng.integers(0, 100, len(y)).astype(str)
    ci = calibration_intervals(y, probs, groups, n_boot=200)
    for entry in ci.values():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert np.array_equal(bootstrap_weights(groups, 200, 0).shape, (200, 300))
    if sharpness == 1.0:  # resampling inflates ECE: the plain percentile interval would leave the estimate out
        samples = weighted_calibration(y, probs, bootstrap_weights(groups, 200, 0))["ece_classwise"]
        assert np.quantile(samples, 0.025) > ci["ece_classwise"]["value"]


# --- temperature scaling -----------------------------------------------------------------------


class Overconfident(nn.Module):
    """A stand-in network: its 'image' (B, 1, 1, C) holds logits, which it multiplies by ``scale``."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * x.flatten(1)


def stub_classifier(scale: float, tta: str | None = None) -> SkinTumorClassifier:
    classifier = SkinTumorClassifier(CLASSES, loss={"alpha": None}, channels_last=False, tta=tta)
    classifier.model = Overconfident(scale)
    return classifier


def logit_loader(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z)])
    x = torch.tensor(z, dtype=torch.float32).reshape(n, 1, 1, 3)
    rows = torch.arange(n)
    return [(x[i : i + 50], torch.tensor(y[i : i + 50]), rows[i : i + 50]) for i in range(0, n, 50)]


def nll(classifier: SkinTumorClassifier, loader) -> float:
    y, scores = classifier.predict_loader(loader, decide=False)
    return float(-np.log(scores[np.arange(len(y)), y]).mean())


@pytest.mark.parametrize("tta", [None, "hflip"])
def test_temperature_fitted_on_validation_cures_an_overconfident_model(tta):
    classifier = stub_classifier(4.0, tta)
    val, test = logit_loader(600, seed=1), logit_loader(600, seed=2)
    before = nll(classifier, val), nll(classifier, test)
    _, probs_before = classifier.predict_loader(test, decide=False)
    temperature = classifier.fit_temperature(val)
    assert temperature == pytest.approx(4.0, rel=0.25) and float(classifier.temperature) == temperature
    assert nll(classifier, val) < before[0] - 0.1 and nll(classifier, test) < before[1] - 0.1
    _, probs_after = classifier.predict_loader(test, decide=False)
    x = test[0][0]
    assert torch.allclose(DecisionPath(classifier)(x)[1], classifier.score_proba(x), atol=1e-6)  # export carries T
    if tta is None:  # confidence moves, the order does not (with TTA, a mean of two softmaxes, it may)
        assert (probs_after.argmax(1) == probs_before.argmax(1)).all()
        assert np.allclose(untempered(probs_after, temperature), probs_before, atol=1e-5)


def test_temperature_one_leaves_probabilities_bit_identical():
    classifier = stub_classifier(3.0)
    x = logit_loader(50, seed=3)[0][0]
    assert float(classifier.temperature) == 1.0 and not classifier.conformal_thresholds.any()
    assert torch.equal(classifier.score_proba(x), torch.softmax(classifier.model(x).float(), dim=1))


def test_onnx_graph_carries_the_temperature(tmp_path):
    from skintumor.deploy.onnx import OnnxMember, export_onnx

    torch.manual_seed(0)
    classifier = SkinTumorClassifier(CLASSES, loss={"alpha": None}, net={"attention": False}, image_size=32).eval()
    classifier.temperature.fill_(2.5)
    path = DecisionPath(classifier).eval()
    x = torch.randn(3, 1, 32, 32)
    probs, scores = OnnxMember(export_onnx(path, tmp_path / "t.onnx", 32))(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(scores, classifier.score_proba(x).numpy(), atol=1e-5)
        untempered = torch.softmax(classifier(x), dim=1).numpy()
    assert np.abs(scores - untempered).max() > 1e-4


def test_old_checkpoints_load_without_temperature_or_thresholds(tmp_path):
    classifier = SkinTumorClassifier(CLASSES, loss={"alpha": None}, net={"attention": False})
    state = {k: v for k, v in classifier.state_dict().items() if k not in ("temperature", "conformal_thresholds")}
    hp = {k: v for k, v in dict(classifier.hparams).items() if k != "calibration"}
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "old.ckpt")
    loaded = load_classifier(tmp_path / "old.ckpt")
    assert loaded.hparams.calibration == "none" and float(loaded.temperature) == 1.0
    assert loaded.conformal_thresholds.shape == (N_CONFORMAL,) == (len(COVERAGES),)


# --- conformal sets ----------------------------------------------------------------------------


def test_conformal_scores_and_sets_by_hand():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    assert np.allclose(aps_scores(probs), [[0.5, 0.8, 1.0], [1.0, 0.6, 0.9]])
    assert prediction_sets(probs, 0.8, "aps").tolist() == [[True, True, False], [False, True, False]]
    assert prediction_sets(probs, 0.85, "lac").tolist() == [[True, True, True], [False, True, True]]
    assert prediction_sets(probs, 0.75, "lac").tolist() == [[True, True, False], [False, True, True]]
    for method in METHODS:
        assert prediction_sets(probs, 0.01, method).sum(1).tolist() == [1, 1]  # never empty: the top class stays
        assert calibrate(probs, np.array([0, 1]), 0.1, method) == 1.0  # too few images for 90 %: full sets
    # 9 calibration images, alpha 0.2: the ceil(10 * 0.8) = 8th smallest true-class score
    y = np.zeros(9, int)
    cal = np.c_[np.linspace(0.9, 0.1, 9), np.linspace(0.1, 0.9, 9) / 2, np.linspace(0.1, 0.9, 9) / 2]
    assert calibrate(cal, y, 0.2, "lac") == pytest.approx(1 - cal[7, 0])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_split_conformal_covers_at_the_target_on_synthetic_data(alpha, method):
    """Marginal coverage >= 1 - alpha on average over many calibration/test draws, also for an
    overconfident model; LAC's (continuous scores) is within 1/(n + 1) of the target and its sets are not
    trivially full, APS (the least likely class always scores 1) may cover more."""
    rng = np.random.default_rng(0)
    coverage, size = [], []
    for _ in range(200):
        y_cal, p_cal = draw(100, rng, sharpness=3.0)
        y_test, p_test = draw(200, rng, sharpness=3.0)
        sets = prediction_sets(p_test, calibrate(p_cal, y_cal, alpha, method), method)
        summary = coverage_summary(sets, y_test, CLASSES)
        coverage.append(summary["coverage"])
        size.append(summary["mean_size"])
    assert np.mean(coverage) >= 1 - alpha - 0.005
    if method == "lac":
        assert np.mean(coverage) <= 1 - alpha + 1 / 101 + 0.005 and np.mean(size) < 2.5


# --- the report --------------------------------------------------------------------------------


def fold_predictions(fold: int, split: str, n: int, rng: np.random.Generator, sharpness: float) -> pd.DataFrame:
    y, probs = draw(n, rng, sharpness)
    table = pd.DataFrame(
        {
            "path": [f"{split}{fold}_{i}.png" for i in range(n)],
            "patient_id": [f"{split}{fold}_P{i // 2}" for i in range(n)],
            "group_id": [f"{split}{fold}_P{i // 2}" for i in range(n)],
            "label": np.asarray(CLASSES)[y],
        }
    )
    for j, c in enumerate(CLASSES):
        table[f"p_{c}"] = probs[:, j]
    table["pred"] = np.asarray(CLASSES)[probs.argmax(1)]
    return table


def calibrated_sweep(root: Path, with_validation=(0, 1, 2), temperature: float | None = None) -> Path:
    rng = np.random.default_rng(5)
    for k in range(3):
        run = root / f"fold_{k}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"data:\n  n_folds: 3\n  fold: {k}\n")
        fold_predictions(k, "test", 150, rng, 2.0).to_csv(run / "predictions_test.csv", index=False)
        if k in with_validation:
            fold_predictions(k, "val", 100, rng, 2.0).to_csv(run / "predictions_val.csv", index=False)
        if temperature:
            (run / "metrics_val.json").write_text(json.dumps({"temperature": temperature}))
    return root


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_report_gives_calibration_and_conformal_coverage(tmp_path):
    result = build_report(calibrated_sweep(tmp_path / "s", temperature=0.5), n_boot=50, console=quiet())
    for level in ("image", "patient"):
        for kind in ("raw", "decided"):
            entry = result[level]["calibration_metrics"][kind]
            assert (
                set(entry) == {"brier", "ece", "ece_classwise"} and entry["brier"]["ci_low"] <= entry["brier"]["value"]
            )
    assert result["image"]["pooled"]["ece"]["value"] == pytest.approx(
        result["image"]["calibration_metrics"]["decided"]["ece"]["value"]
    )
    conformal = result["conformal"]
    assert conformal["folds_used"] == [0, 1, 2] and set(conformal["methods"]) == set(METHODS)
    for targets in conformal["methods"].values():
        assert set(targets) == {"0.9", "0.95"}
        for target, entry in targets.items():
            assert entry["coverage"] >= float(target) - 0.06 and 1 <= entry["mean_size"] <= 3
            low, high = entry["coverage_ci"]  # group bootstrap over the 450 test images
            assert low - 1e-9 <= entry["coverage"] <= high + 1e-9 and high - low < 0.15
            assert high - low > 0.01 or entry["coverage"] == pytest.approx(1.0)  # full sets: nothing to vary
            assert entry["mean_size_ci"][0] <= entry["mean_size"] <= entry["mean_size_ci"][1]
            assert set(entry["per_class"]) == set(CLASSES) and set(entry["thresholds"]) == {"0", "1", "2"}
        assert targets["0.95"]["mean_size"] >= targets["0.9"]["mean_size"]
    # a model made overconfident (T = 0.5 fitted) is undone "before": less sharp, other calibration
    temperature = result["temperature"]
    assert temperature["per_fold"] == {"0": 0.5, "1": 0.5, "2": 0.5}
    assert temperature["before"]["brier"]["value"] != pytest.approx(temperature["after"]["brier"]["value"])
    text = (tmp_path / "s" / "report.md").read_text()
    assert "Conformal prediction sets" in text and "Brier score" in text and "ECE (class-wise)" in text
    lac90 = conformal["methods"]["lac"]["0.9"]
    assert f"{lac90['coverage']:.3f} [{lac90['coverage_ci'][0]:.3f}, {lac90['coverage_ci'][1]:.3f}]" in text
    assert (tmp_path / "s" / "figures" / "reliability_before_temperature.png").is_file()


def test_report_names_folds_without_validation_predictions(tmp_path):
    result = build_report(calibrated_sweep(tmp_path / "s", with_validation=(1,)), n_boot=20, console=quiet())
    assert result["conformal"]["folds_without_validation"] == [0, 2] and result["temperature"] is None
    assert "Folds 0, 2 have no validation predictions" in (tmp_path / "s" / "report.md").read_text()
    old = build_report(calibrated_sweep(tmp_path / "o", with_validation=()), n_boot=20, console=quiet())
    assert old["conformal"]["methods"] == {}


# --- a trained run: validation predictions, thresholds in the checkpoint and the bundle ------------


def test_training_stores_validation_predictions_and_conformal_sets(tiny_run, tmp_path):
    val, test = pd.read_csv(tiny_run / "predictions_val.csv"), pd.read_csv(tiny_run / "predictions_test.csv")
    assert list(val.columns) == list(test.columns) and not set(val["path"]) & set(test["path"])
    metrics = json.loads((tiny_run / "metrics_val.json").read_text())
    stored = [metrics[f"conformal_threshold_{round(100 * c)}"] for c in COVERAGES]
    assert 0 < stored[0] <= stored[1] <= 1 and "temperature" not in metrics  # recipe: no temperature
    checkpoint = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"]["conformal_thresholds"].tolist() == pytest.approx(stored)
    assert float(checkpoint["state_dict"]["temperature"]) == 1.0
    bundle = export_bundle(tiny_run, tmp_path / "model")
    member = json.loads((bundle / "model.json").read_text())["members"][0]
    assert member["temperature"] == 1.0 and member["conformal_thresholds"]["0.9"] == pytest.approx(stored[0])
    predictor = Predictor(load_bundle(bundle))
    images = sorted((Path(json.loads((tiny_run / "split.json").read_text())["root"])).glob("*_0.png"))[:4]
    results = predictor.predict_files(collect_inputs(images), progress=False)
    table = predictions_table(results, predictor.classes)
    assert list(table.columns[:5]) == ["path", "status", "pred", "set_90", "set_95"]
    for result, (_, row) in zip(results, table.iterrows()):
        top = predictor.classes[int(result.scores.argmax())]  # the network's most likely class is always in
        assert top in row["set_90"].split(" or ")
        assert set(row["set_90"].split(" or ")) <= set(row["set_95"].split(" or "))


@pytest.mark.slow
def test_a_run_with_temperature_scaling_stores_and_tests_with_it(masked_manifest, tmp_path):
    """model.calibration=temperature: T fitted on validation before the offsets, written into the tested
    checkpoint, used by the test predictions (a reloaded run reproduces them) and by the bundle."""
    from skintumor.evaluate.finished_run import FinishedRun

    from conftest import run_train, tiny_overrides

    run_dir = tmp_path / "run"
    proc = run_train(*tiny_overrides(masked_manifest), "model.calibration=temperature", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    temperature = json.loads((run_dir / "metrics_val.json").read_text())["temperature"]
    assert temperature != 1.0 and 0.05 <= temperature <= 20
    run = FinishedRun.open(run_dir)
    assert float(run.classifier.temperature) == pytest.approx(temperature) and run.classifier.decision_offsets.any()
    _, probs = run.classifier.predict_loader(run.loader("test"))
    written = pd.read_csv(run_dir / "predictions_test.csv")
    np.testing.assert_allclose(written[[f"p_{c}" for c in run.classifier.classes]].to_numpy(), probs, atol=1e-5)
    member = load_bundle(export_bundle(run_dir, tmp_path / "model")).members[0].classifier
    assert float(member.temperature) == pytest.approx(temperature)
