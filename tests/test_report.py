"""Cross-validation report and comparison: metrics by hand, bootstrap, missing folds, paired tests."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score
from torchmetrics.classification import MulticlassCalibrationError

from skintumor.errors import DataError
from skintumor.evaluate.compare import HOLM_FAMILY, aligned_predictions, build_comparison, holm, mcnemar
from skintumor.evaluate.metrics import (
    HEADLINE,
    bootstrap_weights,
    calibration_bins,
    classification_metrics,
    confidence_intervals,
    expected_calibration_error,
    patient_level,
    weighted_auroc,
    weighted_metrics,
)
from skintumor.evaluate.report import build_report
from skintumor.evaluate.sweep import load_sweep
from skintumor.report import main as report_main

CLASSES = ["cyst", "lipoma", "pilo"]

# six hand-checked rows (see test_metrics_by_hand)
HAND_Y = np.array([0, 0, 1, 1, 2, 2])
HAND_P = np.array(
    [
        [0.6, 0.3, 0.1],  # x, predicted x (right)
        [0.2, 0.5, 0.3],  # x, predicted y
        [0.1, 0.7, 0.2],  # y, predicted y (right)
        [0.3, 0.3, 0.4],  # y, predicted z
        [0.2, 0.2, 0.6],  # z, predicted z (right)
        [0.5, 0.1, 0.4],
    ]
)  # z, predicted x


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=120)


def synthetic_predictions(fold: int, strength: float, model_seed: int, n_patients: int = 30) -> pd.DataFrame:
    """One fold's predictions: images/labels depend only on ``fold``; model noise on ``model_seed``."""
    layout = np.random.default_rng(100 + fold)
    noise = np.random.default_rng(1000 * model_seed + fold)
    rows = []
    for p in range(n_patients):
        label = int(layout.integers(0, 3))
        for i in range(int(layout.integers(1, 4))):
            logits = noise.normal(size=3)
            logits[label] += strength
            probs = np.exp(logits) / np.exp(logits).sum()
            rows.append(
                {
                    "path": f"f{fold}/p{p}_{i}.png",
                    "patient_id": f"P{fold}_{p}",
                    "group_id": f"G{fold}_{p}",
                    "label": CLASSES[label],
                    **{f"p_{c}": probs[j] for j, c in enumerate(CLASSES)},
                    "pred": CLASSES[int(probs.argmax())],
                }
            )
    return pd.DataFrame(rows)


def make_sweep(
    root: Path, strength: float = 2.0, model_seed: int = 0, n_folds: int = 5, absent=(), failed=(), n_patients: int = 30
) -> Path:
    """A sweep directory as the training pipeline writes it (``fold_k/predictions_test.csv`` + hydra config)."""
    for k in range(n_folds):
        if k in absent:
            continue
        run = root / f"fold_{k}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"data:\n  n_folds: {n_folds}\n  fold: {k}\n")
        if k not in failed:
            synthetic_predictions(k, strength, model_seed, n_patients).to_csv(run / "predictions_test.csv", index=False)
    return root


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_by_hand():
    m = classification_metrics(HAND_Y, HAND_P, ["x", "y", "z"])
    # every class: 1 TP, 1 FN, 1 FP, 3 TN
    for c in "xyz":
        assert m[f"sens_{c}"] == pytest.approx(1 / 2)
        assert m[f"spec_{c}"] == pytest.approx(3 / 4)
        assert m[f"prec_{c}"] == pytest.approx(1 / 2)
        assert m[f"f1_{c}"] == pytest.approx(1 / 2)
        assert m[f"acc_{c}"] == pytest.approx(4 / 6)
    # AUROC: share of (positive, negative) pairs ranked right, ties count 1/2
    assert m["auroc_x"] == pytest.approx(5.5 / 8)  # pos {.6,.2} vs neg {.1,.3,.2,.5}
    assert m["auroc_y"] == pytest.approx(6.5 / 8)  # pos {.7,.3} vs neg {.3,.5,.2,.1}
    assert m["auroc_z"] == pytest.approx(7.5 / 8)  # pos {.6,.4} vs neg {.1,.3,.2,.4}
    assert m["auroc_macro"] == pytest.approx((5.5 + 6.5 + 7.5) / 24)
    assert m["acc"] == pytest.approx(0.5) and m["bal_acc"] == pytest.approx(0.5)
    # ECE with 3 bins: bin [1/3, 2/3) holds confidences .6 .5 .4 .6 .5 (2 of 5 right), bin [2/3, 1] holds .7 (right)
    assert expected_calibration_error(HAND_Y, HAND_P, n_bins=3) == pytest.approx(5 / 6 * 0.12 + 1 / 6 * 0.3)


def test_undefined_class_is_nan_not_zero():
    m = classification_metrics(np.array([0, 0, 1, 1]), HAND_P[:4], ["x", "y", "z"])  # no z at all
    assert np.isnan(m["sens_z"]) and np.isnan(m["auroc_z"])
    assert m["bal_acc"] == pytest.approx((m["sens_x"] + m["sens_y"]) / 2)


def random_predictions(n: int, seed: int, strength: float = 1.0, n_patients: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += strength
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    groups = rng.integers(0, n_patients or n // 2, n).astype(str)
    return y, probs, groups


def test_ece_matches_torchmetrics():
    y, probs, _ = random_predictions(400, seed=1)
    reference = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")(torch.tensor(probs), torch.tensor(y))
    assert expected_calibration_error(y, probs, 15) == pytest.approx(float(reference), abs=1e-6)
    bins = calibration_bins(y, probs, 15)
    assert bins["count"].sum() == 400 and np.isnan(bins["accuracy"][0])  # top-label confidence >= 1/3


def test_weighted_metrics_equal_sklearn_point_estimates():
    y, probs, _ = random_predictions(200, seed=2)
    probs = np.round(probs, 2)  # ties
    probs /= probs.sum(1, keepdims=True)
    point = classification_metrics(y, probs, CLASSES)
    weighted = weighted_metrics(y, probs, np.ones((1, len(y))), CLASSES)
    for name, value in point.items():
        assert weighted[name][0] == pytest.approx(value, abs=1e-12), name
    scores = np.random.default_rng(4).dirichlet(np.ones(3), len(y))  # AUROC ranks these when given
    point, weighted = (
        classification_metrics(y, probs, CLASSES, scores=scores),
        weighted_metrics(y, probs, np.ones((1, len(y))), CLASSES, scores=scores),
    )
    for name, value in point.items():
        assert weighted[name][0] == pytest.approx(value, abs=1e-12), name
    assert point["auroc_cyst"] == pytest.approx(roc_auc_score(y == 0, scores[:, 0]))
    assert point["bal_acc"] == classification_metrics(y, probs, CLASSES)["bal_acc"]
    w = np.random.default_rng(3).integers(0, 4, len(y)).astype(float)
    assert weighted_auroc(y == 1, probs[:, 1], w[None])[0] == pytest.approx(
        roc_auc_score(y == 1, probs[:, 1], sample_weight=w)
    )


def test_bootstrap_resamples_whole_patients_reproducibly():
    clusters = np.array(["a", "a", "b", "c", "c", "c"])
    w = bootstrap_weights(clusters, n_boot=300, seed=5)
    assert w.shape == (300, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()  # a patient comes whole
    assert (w[:, [0, 2, 3]].sum(1) == 3).all()  # 3 patients drawn per replicate
    assert np.array_equal(w, bootstrap_weights(clusters, n_boot=300, seed=5))


def test_patient_level_averages_and_splits_mixed_patients():
    y = np.array([0, 0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    out = patient_level(y, probs, ["A", "A", "B", "B", "C"])
    # A: two images of class 0 -> one row, mean probabilities; B has classes 1 and 2 -> two rows
    assert list(zip(out["patient_id"], out["y"])) == [("A", 0), ("B", 1), ("B", 2), ("C", 2)]
    assert np.allclose(out["probs"][0], [0.6, 0.3, 0.1])
    assert out["mixed"] == ["B"] and list(out["n_images"]) == [2, 1, 1, 1]


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_patients():
    widths = []
    for n in (80, 800):
        y, probs, groups = random_predictions(n, seed=n)
        ci = confidence_intervals(y, probs, groups, CLASSES, n_boot=1000, seed=0)
        for name in HEADLINE:
            assert ci[name]["ci_low"] <= ci[name]["value"] <= ci[name]["ci_high"], name
        widths.append(ci["bal_acc"]["ci_high"] - ci["bal_acc"]["ci_low"])
    assert widths[1] < 0.6 * widths[0]  # ~ 1 / sqrt(10) in theory


# --- report ------------------------------------------------------------------------------------


def test_missing_and_failed_folds_are_reported_not_averaged(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", absent=(3,), failed=(1,))
    console = quiet_console()
    result = build_report(sweep_dir, n_boot=200, console=console)
    assert result["folds_used"] == [0, 2, 4]
    assert set(result["folds_missing"]) == {"1", "3"}
    assert "absent" in result["folds_missing"]["3"] and "no predictions_test.csv" in result["folds_missing"]["1"]
    present = [synthetic_predictions(k, 2.0, 0) for k in (0, 2, 4)]
    assert result["n_images"] == sum(len(t) for t in present)
    # the fold mean is over the three present folds only
    by_fold = [
        classification_metrics(
            t["label"].map(CLASSES.index).to_numpy(), t[[f"p_{c}" for c in CLASSES]].to_numpy(), CLASSES
        )["bal_acc"]
        for t in present
    ]
    assert result["image"]["mean_sd"]["bal_acc"]["mean"] == pytest.approx(np.mean(by_fold), abs=1e-9)
    assert result["image"]["mean_sd"]["bal_acc"]["n_folds"] == 3
    text = (sweep_dir / "report.md").read_text()
    assert "folds 0, 2, 4 of 5 (missing: 1, 3)" in text
    assert "fold 1 is missing" in text and "fold 3 is missing" in text
    terminal = console.file.getvalue()
    assert "MISSING fold 1" in terminal and "MISSING fold 3" in terminal


def test_report_writes_markdown_html_figures_json_and_links_explanations(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", n_folds=3)
    (sweep_dir / "fold_0" / "explain").mkdir()
    build_report(sweep_dir, n_boot=200, console=quiet_console())
    for name in ("confusion_image", "confusion_patient", "roc_curves", "reliability"):
        png = sweep_dir / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (sweep_dir / "report.md").read_text()
    page = (sweep_dir / "report.html").read_text()
    assert "](figures/roc_curves.png)" in md and "fold_0/explain/" in md and "fold_1/explain" not in md
    assert page.count("data:image/png;base64,") == 4 and "src='figures/" not in page
    numbers = json.loads((sweep_dir / "metrics_cv.json").read_text())
    assert numbers["folds_missing"] == {} and numbers["patient"]["pooled"]["auroc_macro"]["value"] > 0.8


def test_fold_with_fewer_predictions_than_test_images_is_flagged(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", n_folds=2)
    n = len(pd.read_csv(sweep_dir / "fold_1" / "predictions_test.csv"))
    (sweep_dir / "fold_0" / "split.json").write_text(json.dumps({"fold": 0, "test": list(range(500))}))
    (sweep_dir / "fold_1" / "split.json").write_text(json.dumps({"fold": 1, "test": list(range(n))}))
    warnings = load_sweep(sweep_dir).warnings
    assert len(warnings) == 1 and warnings[0].startswith("fold_0: predictions for") and "of its 500" in warnings[0]


def test_unusable_predictions_file_counts_as_missing(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", n_folds=3)
    bad = sweep_dir / "fold_2" / "predictions_test.csv"
    table = pd.read_csv(bad)
    table["p_cyst"] = 5.0  # logits, not probabilities
    table.to_csv(bad, index=False)
    sweep = load_sweep(sweep_dir)
    assert sorted(sweep.folds) == [0, 1] and "sum to 1" in sweep.missing[2]


def test_cli_reports_bad_directory_in_one_line(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "sweep directory not found" in capsys.readouterr().err


# --- comparison --------------------------------------------------------------------------------


def test_holm_and_mcnemar_by_hand():
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    a = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 1, 0, 1, 1], bool)
    result = mcnemar(a, b)
    assert (result["a_right_b_wrong"], result["a_wrong_b_right"]) == (3, 1)
    assert result["p"] == pytest.approx(binomtest(3, 4, 0.5).pvalue)


def test_comparison_flags_planted_difference_but_not_null(tmp_path):
    strong = make_sweep(tmp_path / "strong", strength=3.0, model_seed=1)
    weak = make_sweep(tmp_path / "weak", strength=0.8, model_seed=2)
    twin = make_sweep(tmp_path / "twin", strength=3.0, model_seed=3)  # same quality, other noise
    planted = build_comparison(strong, weak, n_boot=1000, console=quiet_console())
    assert planted["patient"]["metrics"]["bal_acc"]["significant"]
    assert planted["patient"]["metrics"]["bal_acc"]["ci_low"] > 0
    # macro sensitivity is balanced accuracy: counted once in the Holm family, shown with its p
    for level in ("image", "patient"):
        rows = planted[level]["metrics"]
        family = [rows[m]["p"] for m in HOLM_FAMILY]
        assert len(family) == 7 and np.allclose([rows[m]["p_holm"] for m in HOLM_FAMILY], holm(family))
        assert rows["sens_macro"]["p_holm"] == rows["bal_acc"]["p_holm"]
    assert (strong / "compare_weak" / "comparison.md").is_file()
    assert (strong / "compare_weak" / "comparison.html").is_file()
    null = build_comparison(strong, twin, out_dir=tmp_path / "null", n_boot=1000, console=quiet_console())
    for level in ("image", "patient"):
        assert not any(r["significant"] for r in null[level]["metrics"].values()), level
    assert "No difference is significant" in (tmp_path / "null" / "comparison.md").read_text()


def sweeps_with_one_other_test_image(tmp_path, fold: int) -> tuple[Path, Path]:
    """Two 3-fold sweeps whose test images differ in one row of ``fold``."""
    a = make_sweep(tmp_path / "a", n_folds=3)
    b = make_sweep(tmp_path / "b", n_folds=3, model_seed=1)
    csv = b / f"fold_{fold}" / "predictions_test.csv"
    table = pd.read_csv(csv)
    table.loc[0, "path"] = "elsewhere/other.png"
    table.to_csv(csv, index=False)
    return a, b


def test_comparison_refuses_different_test_images(tmp_path):
    a, b = sweeps_with_one_other_test_image(tmp_path, fold=1)
    with pytest.raises(DataError, match="fold 1: the test images .* differ"):
        aligned_predictions(load_sweep(a), load_sweep(b))


def test_folds_that_share_patients_are_flagged(tmp_path):
    sweep_dir = make_sweep(tmp_path / "sweep", n_folds=3)
    (sweep_dir / "fold_1" / "predictions_test.csv").write_bytes(
        (sweep_dir / "fold_0" / "predictions_test.csv").read_bytes()
    )
    sweep = load_sweep(sweep_dir)
    assert any("more than one fold" in w and "partition" in w for w in sweep.warnings)
    assert any("not patient-grouped" in w for w in sweep.warnings)


# --- the sweep: Hydra config, callbacks, a real multirun ------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def compose_train(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_sweep_dir_and_wandb_group_share_the_sweep_name():
    cfg = compose_train("logger=default", "data.fold=3", "paths.log_dir=/runs")
    assert cfg.hydra.sweep.subdir == "fold_3"
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    assert sweep_dir.parent == Path("/runs") / cfg.task_name / "multiruns"
    assert sweep_dir.name == cfg.sweep_name == cfg.logger.wandb.group
    assert cfg.sweep_name.startswith(cfg.task_name + "_")
    assert cfg.logger.wandb.name == "fold_3" and cfg.logger.wandb.job_type == cfg.task_name  # docs/wandb.md
    for launcher, target in (("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")):
        assert compose_train(f"hydra/launcher={launcher}").hydra.launcher._target_.endswith(target)


def test_hydra_callback_writes_report_after_a_fold_sweep(tmp_path, capsys):
    from skintumor.hydra_callbacks import CrossValidationReport

    sweep_dir = make_sweep(tmp_path / "sweep", n_folds=2)
    cfg = compose_train(f"hydra.sweep.dir={sweep_dir}")
    CrossValidationReport(n_boot=200).on_multirun_end(cfg)
    assert json.loads((sweep_dir / "metrics_cv.json").read_text())["folds_used"] == [0, 1]
    other = make_sweep(tmp_path / "other", n_folds=2)
    CrossValidationReport(n_boot=200).on_multirun_end(compose_train(f"hydra.sweep.dir={other}", "hydra.sweep.subdir=x"))
    assert not (other / "report.md").exists()  # not a sweep over folds: left alone
    search = tmp_path / "search"  # `python -m skintumor.search -m`: fold_<k> dirs with policy files only
    (search / "fold_0").mkdir(parents=True)
    (search / "fold_0" / "policy_fold0.json").write_text("{}")
    capsys.readouterr()  # the reports above printed their paths
    CrossValidationReport(n_boot=200).on_multirun_end(compose_train(f"hydra.sweep.dir={search}"))
    assert capsys.readouterr().out == "" and not (search / "report.md").exists()  # no red "report not written"


def test_hydra_callback_reports_each_member_and_their_ensemble(tmp_path):
    """experiment=recipe_ensemble's layout, <sweep>/member_<seed>/fold_<k>: every member is reported,
    and <sweep>/ensemble holds the members' mean probabilities with its own report."""
    from skintumor.hydra_callbacks import CrossValidationReport

    sweep_dir = tmp_path / "sweep"
    members = [make_sweep(sweep_dir / f"member_{s}", strength=1.0, model_seed=s, n_folds=2) for s in (1, 2)]
    cfg = compose_train(f"hydra.sweep.dir={sweep_dir}", "experiment=recipe_ensemble")
    assert str(cfg.hydra.sweep.subdir) == "member_42/fold_0" and cfg.hydra.sweeper.params.seed == "1,2"
    CrossValidationReport(n_boot=100).on_multirun_end(cfg)
    for m in members:
        assert json.loads((m / "metrics_cv.json").read_text())["folds_used"] == [0, 1]
    ens = load_sweep(sweep_dir / "ensemble")
    assert (sweep_dir / "ensemble" / "report.md").is_file() and not (sweep_dir / "report.md").exists()
    a, b = (load_sweep(m).folds[1].set_index("path") for m in members)
    cols = [f"p_{k}" for k in CLASSES]
    got = ens.folds[1].set_index("path")
    np.testing.assert_allclose(got[cols].to_numpy(), ((a[cols] + b[cols]) / 2).loc[got.index].to_numpy(), atol=1e-5)


def test_one_device_per_job_pins_gpus_only_for_parallel_jobs(monkeypatch):
    from skintumor.hydra_callbacks import OneDevicePerJob

    cfg = compose_train("hydra.job.num=3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.delenv("SKINTUMOR_PINNED_GPU", raising=False)
    OneDevicePerJob(n_jobs=1).on_job_start(cfg)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"  # sequential jobs: hands off
    OneDevicePerJob(n_jobs=2).on_job_start(cfg)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"  # job 3 -> 3 mod 2 -> the second visible GPU


@pytest.mark.slow
def test_two_fold_multirun_end_to_end(tiny_folder, tmp_path):
    import subprocess
    import sys

    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skintumor.train",
            "-m",
            "data=folder",
            f"data.root={tiny_folder}",
            f"data.options.patients_csv={tiny_folder}/patients.csv",
            "data.image_size=32",
            "data.n_folds=2",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "logger=csv",
            "data.fold=0,1",
            f"hydra.sweep.dir={sweep_dir}",
            "callbacks.progress_bar=null",
            "hydra.callbacks.cv_report.n_boot=200",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    numbers = json.loads((sweep_dir / "metrics_cv.json").read_text())
    assert numbers["folds_used"] == [0, 1] and numbers["folds_missing"] == {}
    n_test = sum(len(pd.read_csv(sweep_dir / f"fold_{k}" / "predictions_test.csv")) for k in (0, 1))
    assert numbers["n_images"] == n_test == 36  # every image tested exactly once
    assert (sweep_dir / "report.html").is_file() and (sweep_dir / "figures" / "roc_curves.png").is_file()
    assert "trainer.max_epochs=1" in (sweep_dir / "report.md").read_text()  # what was trained is stated
    assert numbers["warnings"] == []


# --- fold ensembles ------------------------------------------------------------------------------


def test_ensemble_averages_members_and_beats_them_on_independent_noise(tmp_path):
    members = [make_sweep(tmp_path / f"m{s}", strength=1.0, model_seed=s) for s in range(3)]
    out = tmp_path / "ens"
    assert report_main(["--ensemble", str(out), *map(str, members), "--n-boot", "100"]) == 0
    ens = load_sweep(out)
    assert sorted(ens.folds) == list(range(5)) and (out / "report.md").is_file()
    a, b, c = (load_sweep(m).folds[2].set_index("path") for m in members)
    got = ens.folds[2].set_index("path")
    cols = [f"p_{k}" for k in CLASSES]
    np.testing.assert_allclose(
        got[cols].to_numpy(), ((a[cols] + b[cols] + c[cols]) / 3).loc[got.index].to_numpy(), atol=1e-5
    )

    # members with independent noise: the average is better than any single member
    def pooled_auroc(sweep):
        table = sweep.pooled()
        return classification_metrics(table["y"], table[cols].to_numpy(), CLASSES)["auroc_macro"]

    assert pooled_auroc(ens) > max(pooled_auroc(load_sweep(m)) for m in members)
    # never written over
    assert report_main(["--ensemble", str(out), *map(str, members)]) == 2


def test_an_ensemble_report_names_every_member_and_its_overrides(tmp_path):
    members = [make_sweep(tmp_path / f"m{s}", model_seed=s, n_folds=3) for s in (1, 2)]
    for s, member in zip((1, 2), members):
        for k in range(3):
            (member / f"fold_{k}" / ".hydra" / "overrides.yaml").write_text(f"- seed={s}\n- data.fold={k}\n")
    out = tmp_path / "ens"
    assert report_main(["--ensemble", str(out), *map(str, members), "--n-boot", "100"]) == 0
    ens = load_sweep(out)
    # its .hydra is copied from the first member; saying "run with seed=1" would misdescribe it
    assert ens.overrides == [] and ens.members == {"m1": ["seed=1"], "m2": ["seed=2"]}
    report = (out / "report.md").read_text()
    assert "`m1`: `seed=1`" in report and "`m2`: `seed=2`" in report and "Run with:" not in report
    build_comparison(members[0], out, out_dir=tmp_path / "cmp", n_boot=20, console=quiet_console())
    comparison = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "A run with: `seed=1`" in comparison and "B is an ensemble of: `m1` run with `seed=1`; `m2`" in comparison


def test_ensemble_refuses_members_with_other_test_images(tmp_path):
    from skintumor.evaluate.ensemble import ensemble_sweeps

    a, b = sweeps_with_one_other_test_image(tmp_path, fold=0)
    with pytest.raises(DataError, match="fold_0: test images differ"):
        ensemble_sweeps([a, b], tmp_path / "ens")


def test_training_time_metrics_agree_with_the_report_when_a_class_is_absent():
    """metrics_val.json / metrics_test.json (torchmetrics during training) and the report
    (classification_metrics) must give the same numbers, also for a split that lacks a class."""
    from skintumor.models.metrics import stage_metrics, summarise

    rng = np.random.default_rng(0)
    y = rng.choice([0, 1], size=40)  # class 2 is absent
    logits = rng.normal(size=(40, 3))
    logits[np.arange(40), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    collection = stage_metrics(3)
    collection.update(torch.from_numpy(probs).float(), torch.from_numpy(y))
    online = summarise(collection.compute(), CLASSES)
    offline = classification_metrics(y, probs, CLASSES)
    for key in ("bal_acc", "auroc_macro", "sens_macro", f"sens_{CLASSES[0]}", f"auroc_{CLASSES[1]}"):
        assert online[key] == pytest.approx(offline[key], abs=1e-6), key
    assert np.isnan(online[f"sens_{CLASSES[2]}"]) and np.isnan(online[f"auroc_{CLASSES[2]}"])


# --- scores before class offsets (model.decision=balanced) ------------------------------------


def offset_sweep(root: Path, offsets: dict[int, np.ndarray], scores: bool = True) -> Path:
    """make_sweep, then every fold's p_ shifted by that fold's class offsets (as a run with
    model.decision=balanced writes them) and the unshifted probabilities kept as score_ columns."""
    from skintumor.models.decision import shift_probabilities

    make_sweep(root, strength=1.0)
    cols = [f"p_{c}" for c in CLASSES]
    for k, off in offsets.items():
        csv = root / f"fold_{k}" / "predictions_test.csv"
        table = pd.read_csv(csv)
        raw = table[cols].to_numpy(float)
        table[cols] = shift_probabilities(raw, off)
        table["pred"] = np.asarray(CLASSES)[table[cols].to_numpy().argmax(1)]
        if scores:
            table[[f"score_{c}" for c in CLASSES]] = raw
        table.to_csv(csv, index=False)
    return root


def test_auroc_ranks_the_scores_before_the_offsets_and_decisions_use_the_offsets(tmp_path):
    offsets = {k: np.array([0.0, 1.2 * (k % 2) - 0.6, 0.9 - 0.4 * k]) for k in range(5)}
    plain_dir, shifted_dir = make_sweep(tmp_path / "plain", strength=1.0), offset_sweep(tmp_path / "s", offsets)
    plain, shifted = load_sweep(plain_dir), load_sweep(shifted_dir)
    with_scores = build_report(shifted_dir, n_boot=50, console=quiet_console())
    pooled = with_scores["image"]["pooled"]
    table, table_plain = shifted.pooled(), plain.pooled()
    y, raw = table["y"].to_numpy(), table_plain[[f"p_{c}" for c in CLASSES]].to_numpy()
    # the ranking is the unshifted model's, pooled over folds ...
    expected = np.mean([roc_auc_score(y == c, raw[:, c]) for c in range(3)])
    assert pooled["auroc_macro"]["value"] == pytest.approx(expected, abs=1e-5)
    p = table[[f"p_{c}" for c in CLASSES]].to_numpy()
    shifted_auroc = np.mean([roc_auc_score(y == c, p[:, c]) for c in range(3)])
    assert abs(shifted_auroc - expected) > 1e-3  # (the planted offsets do change the ranking)
    # ... while the decision is the shifted one
    assert pooled["bal_acc"]["value"] == pytest.approx(classification_metrics(y, p, CLASSES)["bal_acc"])
    assert pooled["bal_acc"]["value"] != pytest.approx(classification_metrics(y, raw, CLASSES)["bal_acc"])
    # without score_ columns, AUROC ranks p_ as before
    old = build_report(offset_sweep(tmp_path / "o", offsets, scores=False), n_boot=50, console=quiet_console())
    assert old["image"]["pooled"]["auroc_macro"]["value"] == pytest.approx(shifted_auroc, abs=1e-5)
    # the paired comparison ranks the scores too: the same model with and without offsets has equal AUROC
    comparison = build_comparison(shifted_dir, plain_dir, tmp_path / "cmp", n_boot=50, console=quiet_console())
    assert comparison["image"]["metrics"]["auroc_macro"]["diff"] == pytest.approx(0, abs=1e-5)
    assert comparison["patient"]["metrics"]["auroc_macro"]["diff"] == pytest.approx(0, abs=1e-5)


def test_bad_score_columns_name_the_file(tmp_path):
    sweep_dir = offset_sweep(tmp_path / "s", {0: np.array([0.0, 0.5, -0.5])})
    csv = sweep_dir / "fold_0" / "predictions_test.csv"
    table = pd.read_csv(csv)
    table["score_cyst"] = table["score_cyst"] * 3
    table.to_csv(csv, index=False)
    sweep = load_sweep(sweep_dir)
    assert 0 not in sweep.folds and "score_ columns must sum to 1" in sweep.missing[0]
    table.rename(columns={"score_cyst": "score_other"}).to_csv(csv, index=False)
    assert "must name the p_ classes" in load_sweep(sweep_dir).missing[0]


def test_ensemble_averages_scores_and_decisions_separately(tmp_path):
    offsets = {k: np.array([0.0, 0.8, -0.8]) for k in range(5)}
    a = offset_sweep(tmp_path / "a", offsets)
    b = make_sweep(tmp_path / "b", strength=1.0, model_seed=1)  # argmax member: no score_ columns
    from skintumor.evaluate.ensemble import ensemble_sweeps

    out = ensemble_sweeps([a, b], tmp_path / "ens")
    written = pd.read_csv(out / "fold_1" / "predictions_test.csv").set_index("path")
    ta, tb = (load_sweep(d).folds[1].set_index("path").loc[written.index] for d in (a, b))
    for kind in ("p", "score"):
        cols = [f"{kind}_{c}" for c in CLASSES]
        np.testing.assert_allclose(written[cols].to_numpy(), (ta[cols].to_numpy() + tb[cols].to_numpy()) / 2, atol=1e-5)
    assert (written["pred"] == np.asarray(CLASSES)[written[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(1)]).all()
    # two argmax members: nothing to keep apart, no score_ columns
    c = make_sweep(tmp_path / "c", strength=1.0, model_seed=2)
    plain = pd.read_csv(ensemble_sweeps([b, c], tmp_path / "ens2") / "fold_1" / "predictions_test.csv")
    assert not [col for col in plain.columns if col.startswith("score_")]
