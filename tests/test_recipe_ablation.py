"""The selection machinery of benchmarks/recipe_ablation.py: what decides the recipe must be right."""

import sys

import pytest

from conftest import REPO, load_benchmark

ablation = load_benchmark("recipe_ablation")


def rows(variant, val_auroc, val_bal, folds=range(5), seed=42):
    return [{"variant": variant, "stage": "explore", "fold": k, "seed": seed, "val_auroc": val_auroc,
             "val_bal_acc": val_bal} for k in folds]


def test_scores_average_validation_only_and_skip_incomplete_variants():
    results = (rows("recipe", 0.80, 0.60) + rows("balanced", 0.90, 0.70) + rows("ema", 0.99, 0.99, folds=range(4))
               + [{"variant": "balanced", "stage": "final", "fold": 0, "val_auroc": 0.0, "val_bal_acc": 0.0}])
    scores = ablation.variant_scores(results, ["recipe", "balanced", "ema"], list(range(5)))
    assert scores["recipe"]["score"] == pytest.approx(0.70) and scores["balanced"]["score"] == pytest.approx(0.80)
    assert "ema" not in scores  # a fold missing: never adopted


def test_select_adopts_the_best_option_per_factor_past_the_margin_and_never_a_reference():
    scores = {"recipe": {"score": 0.800}, "study": {"score": 0.90}, "resnet18": {"score": 0.95},
              "epochs30": {"score": 0.805}, "epochs75": {"score": 0.815},        # length: 75 wins, past 0.01
              "balanced": {"score": 0.809},                                      # within the margin
              "aug_default": {"score": 0.812}, "aug_policy": {"score": 0.830}}   # augment: the policy wins
    adopted, overrides = ablation.select(scores, margin=0.01)
    assert sorted(adopted) == ["aug_policy", "epochs75"]
    assert "trainer.max_epochs=75" in overrides and "augment=policy" in overrides
    assert ablation.select(scores, margin=0.01, reference=0.9)[0] == []  # an earlier, better reference


def test_merge_lets_a_later_override_replace_an_earlier_one():
    merged = ablation.merge(["experiment=recipe", "augment=strong", "data.sampler=null"],
                            ["augment=default"], ["data.sampler=balanced", "seed=1"])
    assert merged == ["experiment=recipe", "augment=default", "data.sampler=balanced", "seed=1"]


def test_cpu_precision_benchmark_runs_the_recipes_train_step(tmp_path):
    """The benchmark behind the README's bf16 advice must keep running as the module changes."""
    import json
    import subprocess

    out = tmp_path / "precision.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_precision.py"), "--steps", "1", "--repeats", "1",
                           "--size", "32", "--batch", "4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["fp32"] > 0 and result["bf16-mixed"] > 0
    assert result["ratio_bf16_to_fp32"] == result["bf16-mixed"] / result["fp32"]
    assert "--size 32" in result["command"] and isinstance(result["cpu_bf16_flags"], (list, type(None)))
