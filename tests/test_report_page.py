"""The report page's cohort table, post hoc temperature scaling and model card."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import log_softmax, softmax
from test_report import CLASSES, make_sweep, quiet_console

from skintumor.evaluate.model_card import model_card_section
from skintumor.evaluate.report import build_report, report_document
from skintumor.evaluate.summary import REPORT_FITTED, evaluate_sweep, fit_temperature, report_temperatures, tempered
from skintumor.evaluate.sweep import load_sweep

# build_report spends its time drawing figures: the tests that read only the text render the document
FIGURES = {k: f"figures/{k}.png" for k in ("confusion_image", "confusion_patient", "roc", "reliability")}


def report_markdown(sweep_dir: Path) -> tuple[dict, str]:
    """The numbers and report.md of a sweep, without figures (their links only)."""
    sweep = load_sweep(sweep_dir)
    result = evaluate_sweep(sweep, n_boot=20)
    return result, report_document(sweep, result, FIGURES).to_markdown()


def nll(scores: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(scores[np.arange(len(y)), y]).mean())


def overconfident(n: int, rng: np.random.Generator, true_t: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z / true_t), scores softmax(z): a network overconfident by true_t."""
    logits = rng.normal(size=(n, 3)) * 3.0
    p_true = softmax(logits / true_t, axis=1)
    y = (p_true.cumsum(1) < rng.random((n, 1))).sum(1)
    return softmax(logits, axis=1), y


def predictions(scores: np.ndarray, y: np.ndarray, prefix: str) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "path": [f"{prefix}_{i}.png" for i in range(len(y))],
            "patient_id": [f"{prefix}_P{i // 2}" for i in range(len(y))],
            "group_id": [f"{prefix}_P{i // 2}" for i in range(len(y))],
            "label": np.asarray(CLASSES)[y],
        }
    )
    for j, c in enumerate(CLASSES):
        table[f"p_{c}"] = scores[:, j]
    return table


def overconfident_sweep(root: Path, n_folds: int = 3, validation: bool = True) -> Path:
    """Folds whose test and validation predictions are overconfident by a factor of 2, no run temperature."""
    rng = np.random.default_rng(11)
    for k in range(n_folds):
        run = root / f"fold_{k}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"data:\n  n_folds: {n_folds}\n  fold: {k}\n")
        predictions(*overconfident(300, rng), f"test{k}").to_csv(run / "predictions_test.csv", index=False)
        if validation:
            predictions(*overconfident(300, rng), f"val{k}").to_csv(run / "predictions_val.csv", index=False)
    return root


# --- temperature fitted by the report ---------------------------------------------------------------


def test_fit_temperature_finds_the_overconfidence_and_lowers_the_nll():
    scores, y = overconfident(5000, np.random.default_rng(0), true_t=2.0)
    t = fit_temperature(scores, y)
    assert t == pytest.approx(2.0, abs=0.3)
    assert nll(tempered(scores, t), y) < nll(scores, y) - 0.01
    # the fit is the NLL minimum: a little off either side is worse
    logits = np.log(scores)
    losses = [-log_softmax(logits / s, axis=1)[np.arange(len(y)), y].mean() for s in (0.9 * t, t, 1.1 * t)]
    assert losses[1] < losses[0] and losses[1] < losses[2]
    # a calibrated network keeps T close to 1
    calibrated, y1 = overconfident(5000, np.random.default_rng(1), true_t=1.0)
    assert fit_temperature(calibrated, y1) == pytest.approx(1.0, abs=0.15)


def test_report_fits_a_temperature_on_validation_when_the_runs_did_not(tmp_path):
    sweep_dir = overconfident_sweep(tmp_path / "s")
    result = build_report(sweep_dir, n_boot=20, console=quiet_console())
    temperature = result["temperature"]
    assert temperature["source"] == REPORT_FITTED
    assert set(temperature["per_fold"]) == {"0", "1", "2"}
    assert all(1.5 < t < 2.6 for t in temperature["per_fold"].values())
    assert temperature["after"]["ece"]["value"] < temperature["before"]["ece"]["value"]
    assert temperature["after"]["brier"]["value"] < temperature["before"]["brier"]["value"]
    # "before" is the runs' own probabilities, as the rest of the report
    assert temperature["before"]["ece"]["value"] == pytest.approx(
        result["image"]["calibration_metrics"]["raw"]["ece"]["value"]
    )
    for when in ("before", "after"):
        assert (sweep_dir / "figures" / f"reliability_{when}_temperature.png").is_file()
    page = (sweep_dir / "report.html").read_text()
    assert "fitted by the report on each fold" in page and "fitted by each run" not in page
    assert "before temperature scaling" in page and "after temperature scaling" in page
    assert json.loads((sweep_dir / "metrics_cv.json").read_text())["temperature"]["source"] == REPORT_FITTED
    # every figure is embedded in the page
    md = (sweep_dir / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    on_disk = sorted(p.relative_to(sweep_dir).as_posix() for p in (sweep_dir / "figures").glob("*.png"))
    assert sorted(linked) == on_disk and len(on_disk) == 6  # confusion x2, ROC, reliability, before/after T
    assert page.count("src='data:image/png;base64,") == len(on_disk) and "src='figures/" not in page


def test_an_ensemble_of_seeds_is_calibrated_on_its_members_mean_validation(tmp_path):
    """Members that share the validation images (seeds): their mean validation predictions go with the
    ensemble, whose report then fits a temperature and conformal sets; members validated on other
    images leave them out."""
    from skintumor.evaluate.ensemble import ensemble_sweeps

    a = overconfident_sweep(tmp_path / "a")
    b = overconfident_sweep(tmp_path / "b")  # the same images; another "seed": its scores moved
    for csv in b.glob("fold_*/predictions_*.csv"):
        table = pd.read_csv(csv)
        cols = [f"p_{c}" for c in CLASSES]
        table[cols] = 0.7 * table[cols].to_numpy() + 0.1
        table.to_csv(csv, index=False)
    out = ensemble_sweeps([a, b], tmp_path / "ens")
    mean = pd.read_csv(out / "fold_1" / "predictions_val.csv").set_index("path")
    va, vb = (pd.read_csv(d / "fold_1" / "predictions_val.csv").set_index("path").loc[mean.index] for d in (a, b))
    cols = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(mean[cols].to_numpy(), (va[cols].to_numpy() + vb[cols].to_numpy()) / 2, atol=1e-5)
    result = build_report(out, n_boot=20, console=quiet_console())
    assert result["temperature"]["source"] == REPORT_FITTED and set(result["temperature"]["per_fold"]) == {
        "0",
        "1",
        "2",
    }
    assert result["conformal"]["folds_without_validation"] == []
    # a member validated on other images: no validation predictions for the ensemble's fold
    other = tmp_path / "c"
    shutil.copytree(a, other)
    table = pd.read_csv(other / "fold_1" / "predictions_val.csv")
    table["path"] = "other_" + table["path"]
    table.to_csv(other / "fold_1" / "predictions_val.csv", index=False)
    mixed = ensemble_sweeps([a, other], tmp_path / "ens2")
    assert (mixed / "fold_0" / "predictions_val.csv").is_file() and not (
        mixed / "fold_1" / "predictions_val.csv"
    ).exists()


def test_no_validation_predictions_no_post_hoc_temperature(tmp_path):
    result, md = report_markdown(overconfident_sweep(tmp_path / "s", validation=False))
    assert result["temperature"] is None and "temperature scaling" not in md


def test_test_fold_never_influences_the_fitted_temperature(tmp_path):
    sweep_dir = overconfident_sweep(tmp_path / "s")
    before = report_temperatures(load_sweep(sweep_dir))
    test_csv = sweep_dir / "fold_1" / "predictions_test.csv"
    table = pd.read_csv(test_csv)
    cols = [f"p_{c}" for c in CLASSES]
    table[cols] = np.random.default_rng(3).dirichlet(np.ones(3) * 0.2, len(table))  # other test scores
    table.to_csv(test_csv, index=False)
    assert report_temperatures(load_sweep(sweep_dir)) == before
    # while the validation predictions do decide it
    val_csv = sweep_dir / "fold_1" / "predictions_val.csv"
    table = pd.read_csv(val_csv)
    table[cols] = softmax(np.log(table[cols].to_numpy()) * 3, axis=1)  # sharper still
    table.to_csv(val_csv, index=False)
    after = report_temperatures(load_sweep(sweep_dir))
    assert after[0] == before[0] and after[1] > 2 * before[1]


# --- cohort ---------------------------------------------------------------------------------------


def hand_cohort_sweep(root: Path) -> Path:
    """Two folds, 9 images. Fold 0: patients A (cyst, 2 images) and B (cyst, 1 image) share group G1
    (near-duplicates), C (lipoma, 3 images, G2). Fold 1: D (pilo, 1 image, G3), E with a cyst and a
    lipoma image (G4)."""
    rows = {
        0: [("A", "G1", "cyst")] * 2 + [("B", "G1", "cyst")] + [("C", "G2", "lipoma")] * 3,
        1: [("D", "G3", "pilo"), ("E", "G4", "cyst"), ("E", "G4", "lipoma")],
    }
    for k, fold in rows.items():
        run = root / f"fold_{k}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"data:\n  n_folds: 2\n  fold: {k}\n")
        table = pd.DataFrame(fold, columns=["patient_id", "group_id", "label"])
        table.insert(0, "path", [f"f{k}_{i}.png" for i in range(len(table))])
        probs = np.full((len(table), 3), 0.2)
        probs[np.arange(len(table)), table["label"].map(CLASSES.index)] = 0.6
        table[[f"p_{c}" for c in CLASSES]] = probs
        table.to_csv(run / "predictions_test.csv", index=False)
    return root


def test_cohort_counts_images_patients_and_groups_per_class(tmp_path):
    result, md = report_markdown(hand_cohort_sweep(tmp_path / "s"))
    cohort = result["cohort"]
    counts = {c: (v["images"], v["patients"], v["groups"]) for c, v in cohort["per_class"].items()}
    assert counts == {"cyst": (4, 3, 2), "lipoma": (4, 2, 2), "pilo": (1, 1, 1)}
    total = cohort["total"]
    assert (total["images"], total["patients"], total["groups"]) == (9, 5, 4)  # E and G4 once in the total
    assert cohort["per_class"]["cyst"]["share"] == pytest.approx(4 / 9) and total["share"] == 1
    assert "| cyst | 4 | 3 | 2 | 44.4 % |" in md and "| total | 9 | 5 | 4 | 100.0 % |" in md
    assert "the pooled test sets are the whole cohort" in md
    assert md.index("## Cohort") < md.index("## Main results")


def test_cohort_of_an_incomplete_sweep_says_it_covers_the_tested_folds(tmp_path):
    result, md = report_markdown(make_sweep(tmp_path / "s", n_folds=3, absent=(2,), n_patients=8))
    assert result["cohort"]["total"]["images"] == result["n_images"]
    assert "tested folds only (folds 0, 1 of 3 (missing: 2))" in md and "whole cohort" not in md


# --- model card -----------------------------------------------------------------------------------

RUN_YAML = {  # run.yaml: the resolved identity settings
    "data": {
        "source": "busi",
        "root": "../shared/data/busi",
        "n_folds": 3,
        "seed": 1000,
        "image_size": 224,
        "batch_size": 16,
        "mean": 0.449,
        "std": 0.226,
        "dedup": True,
        "max_distance": 32,
        "val_fraction": 0.2,
    },
    "augment": {"name": "default"},
    "model": {
        "net": {"attention": True, "pretrained": False, "lesion_decoder": False},
        "loss": {"gamma": 2.0, "alpha": "auto", "label_smoothing": 0.0},
        "optimizer": {"name": "adam", "lr": 1.0e-4, "weight_decay": 0.0},
        "scheduler": {"name": "step", "step_size": 7, "gamma": 0.1},
        "decision": "balanced",
        "calibration": "none",
    },
    "seed": 42,
    "test_checkpoint": "best",
}
HYDRA_CONFIG = {  # .hydra/config.yaml: every group, interpolations unresolved
    "data": {"n_folds": 3, "fold": 0, "seed": "${seed}", "sampler_seed": "${seed}"},
    "trainer": {"max_epochs": 17, "default_root_dir": "${paths.output_dir}"},
}


def test_model_card_reads_the_first_folds_config(tmp_path):
    sweep_dir = make_sweep(tmp_path / "s", n_folds=3, n_patients=10)
    (sweep_dir / "fold_0" / "run.yaml").write_text(yaml.safe_dump(RUN_YAML))
    (sweep_dir / "fold_0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(HYDRA_CONFIG))
    config = load_sweep(sweep_dir).config
    assert config["trainer"]["max_epochs"] == 17 and config["data"]["seed"] == 1000  # run.yaml resolves ${seed}
    result = build_report(sweep_dir, n_boot=20, console=quiet_console())
    assert json.loads((sweep_dir / "metrics_cv.json").read_text())["cohort"] == json.loads(json.dumps(result["cohort"]))
    page = (sweep_dir / "report.html").read_text()
    for expected in (
        "<h2>Model card</h2>",
        "Epochs: 17",
        "source <code>busi</code>",
        "224 x 224 px",
        "partition seed 1000",
        "3 folds",
        "ResNet18 with two grid attention gates, trained from scratch",
        "focal loss (gamma 2.0)",
        "adam, learning rate 0.0001",
        "Decision rule: <code>balanced</code>",
        "Tested checkpoint: <code>best</code>",
        "Not a medical device",
        "cyst, lipoma, pilo",
        "Limitations",
    ):
        assert expected in page, expected
    assert "${" not in page
    assert page.index("<h2>Model card</h2>") < page.index("<h2>How the numbers are computed</h2>")
    tripod = page[page.index("TRIPOD+AI checklist") :]
    table = tripod[tripod.index("<table>") : tripod.index("</table>")]
    assert 10 <= table.count("<tr>") - 1 <= 14  # rows after the header
    assert table.count("not in this report") == 3 and "External validation" in table
    assert "class='num'" not in table  # a text table reads left-aligned
    summary = page[page.index("<h2>Main results</h2>") :]
    summary = summary[summary.index("<table>") : summary.index("</table>")]
    assert summary.count("<th class='num'>") == 4 and "<th>metric</th>" in summary


def test_tables_right_align_numbers_and_left_align_text():
    from skintumor.evaluate.document import Document, numeric_columns

    rows = [
        ["AUROC", "0.905 [0.880, 0.927]", "+0.046", "<0.001", "**yes**", "n/a"],
        ["ECE", "0.049", "-0.067", "0.005", "no", ""],
    ]
    assert numeric_columns(rows, 6) == [False, True, True, True, False, True]
    doc = Document("t")
    doc.table(["metric", "value", "diff", "p", "significant", "note"], rows)
    assert "|---|---:|---:|---:|---|---:|" in doc.to_markdown()


def test_model_card_survives_missing_and_odd_config(tmp_path):
    sweep_dir = make_sweep(tmp_path / "s", n_folds=2, n_patients=8)
    odd = {"data": {"n_folds": 2, "image_size": None}, "model": {"net": "resnet", "loss": None}, "trainer": []}
    (sweep_dir / "fold_0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(odd))
    _, md = report_markdown(sweep_dir)
    card = md[md.index("## Model card") : md.index("## How the numbers are computed")]
    assert "Epochs" not in card and "Architecture" not in card and "Intended use" in card
    # no configuration at all: the card says so instead of guessing
    card = model_card_section(None, {}, CLASSES)
    text = json.dumps(card.blocks)
    assert "settings unknown" in text and "configuration not found" in text and "n/a [n/a, n/a]" in text
