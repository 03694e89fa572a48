"""The maintained benchmarks (``python -m benchmarks.NAME``): each one's ``--quick`` path, run in this
process, writes its result file with the command line, the date, the machine and sane numbers."""

from __future__ import annotations

import datetime
import importlib
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO

BENCHMARKS = (
    "throughput",
    "augment_cost",
    "phantom_difficulty",
    "cv_busi",
    "explain_agreement",
    "gpu_smoke",
    "inference",
    "explain_speed",
    "serve_load",
    "dedup_threshold",
)
BUSI = REPO.parent / "shared" / "data" / "busi"


def quick(name: str, out: Path, *args: str) -> dict:
    """Run ``benchmarks.NAME``'s main with ``--quick``; check the provenance; return the result."""
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.main([*args, "--quick", "--out", str(out)]) == 0
    payload = json.loads((out / f"{name}_quick.json").read_text())
    assert payload["benchmark"] == name and payload["quick"] is True
    assert payload["command"] == f"python -m benchmarks.{name} " + " ".join([*args, "--quick", "--out", str(out)])
    assert datetime.datetime.fromisoformat(payload["date"]).tzinfo is not None
    machine = payload["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] == torch.__version__
    assert machine["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    assert payload["seconds"] >= 0
    return payload["result"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_runs_as_a_module_with_quick_and_out(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    assert f"python -m benchmarks.{name}" in module.__doc__
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "--quick" in text and "--out" in text


@pytest.mark.slow  # three Lightning fits and a child process for the peak RSS: ~30 s on 2 cores
def test_throughput_quick(tmp_path):
    result = quick("throughput", tmp_path)
    assert set(result["images_per_s"]) == {"bare", "pipeline_resnet18", "pipeline_attention"}
    assert all(v > 0 for v in result["images_per_s"].values())
    assert result["ratio_resnet18_vs_bare"] > 0 and result["ratio_attention_vs_bare"] > 0
    assert 0 < result["peak_rss_gib_batch16"] < 64


def test_augment_cost_quick(tmp_path):
    threads = torch.get_num_threads()
    result = quick("augment_cost", tmp_path)
    assert torch.get_num_threads() == threads  # its --threads 1 does not leak into the caller
    assert result["trials"] == 4 and 0 <= result["pruned"] < 4 and result["inner_folds"] == 2
    assert result["cpu_s_train_epoch"] > 0 and result["cpu_s_child"] > 0 and result["cpu_s_trials"] > 0
    assert result["search_cpu_s"] > 0 and result["training_cpu_s"] > 0 and result["search_over_training"] > 0
    assert result["inner_train_images"] + result["inner_val_images"] == result["train_images"] + result["val_images"]


def test_phantom_difficulty_quick(tmp_path):
    result = quick("phantom_difficulty", tmp_path)
    assert result["images"] == 30 and result["patients"] == 20
    assert result["generation"]["generated"] and result["generation"]["seconds"] > 0
    assert set(result["histogram"]) == {"C=0.01", "C=0.1", "C=1.0", "C=10.0"}
    for scores in [*result["histogram"].values(), result["morphology"]]:
        assert 0 <= scores["pooled"] <= 1 and len(scores["per_fold"]) == 5
    assert result["histogram_best_pooled"] == max(v["pooled"] for v in result["histogram"].values())


def test_dedup_threshold_quick(tmp_path):
    result = quick("dedup_threshold", tmp_path)
    rows = result["thresholds"]
    assert [r["max_distance"] for r in rows] == list(range(16, 33)) and result["seeds"] == [1000, 0]
    reference = result["reference"]
    assert 0 < reference["same_lesion_pairs"] <= reference["judged_pairs"] <= reference["candidate_pairs"]
    for r in rows:
        assert 1 <= r["largest_group"] <= result["images"] and r["groups"] <= result["images"]
        assert r["same_lesion_in_two_groups"] <= r["same_lesion_in_two_groups_all"] <= reference["same_lesion_pairs"]
        for split in r["split"].values():  # a pair in one group is never split across folds
            assert split["upto_max_threshold"] <= min(split["all"], r["same_lesion_in_two_groups"])
    assert [r["groups"] for r in rows] == sorted((r["groups"] for r in rows), reverse=True)
    assert result["lowest_threshold_without_split_pairs"] is not None
    table = (tmp_path / "dedup_threshold_quick" / "table.md").read_text()
    assert "python -m benchmarks.dedup_threshold" in table and "| 24 |" in table
    assert (tmp_path / "dedup_threshold_quick" / "pairs.csv").is_file()


def test_cv_busi_without_its_data_says_so_in_one_line(tmp_path, capsys):
    from benchmarks import cv_busi

    assert cv_busi.main(["--quick", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"cv_busi: BUSI not found at {tmp_path / 'nothing'} (pass --data DIR)"
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # two 2-fold sweeps of BUSI (1 epoch, 32 px) and their comparison: ~1-2 min
@pytest.mark.skipif(not BUSI.is_dir(), reason=f"BUSI not found at {BUSI}")
def test_cv_busi_quick(tmp_path):
    result = quick("cv_busi", tmp_path, "--data", str(BUSI))
    assert set(result["sweeps"]) == {"attention_resnet18", "resnet18"}
    for sweep in result["sweeps"].values():
        assert sweep["returncode"] == 0 and sweep["seconds"] > 0 and sweep["report"]
    comparison = result["comparison"]
    assert comparison["returncode"] == 0 and comparison["folds"] == [0, 1]
    assert Path(comparison["path"]).is_file()
    for name in ("acc", "bal_acc", "auroc_macro"):
        assert 0 <= comparison["image"][name]["a"] <= 1 and 0 <= comparison["image"][name]["b"] <= 1


@pytest.mark.slow  # trains one epoch in a subprocess, then explains its test fold: ~1 min
def test_explain_agreement_quick(tmp_path):
    result = quick("explain_agreement", tmp_path)
    assert result["train"]["returncode"] == 0
    explain = result["explain"]
    assert explain["n_test"] > 0 and 0 <= explain["accuracy"] <= 1 and explain["agreement"]
    assert (Path(result["run_dir"]) / "explain" / "agreement.md").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")
def test_gpu_smoke_without_cuda_exits_1_unless_quick(tmp_path, capsys):
    from benchmarks import gpu_smoke

    assert gpu_smoke.main(["--out", str(tmp_path)]) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # a 1-epoch training run in a subprocess (CPU stand-in without CUDA): ~40 s on 2 cores
def test_gpu_smoke_quick(tmp_path):
    result = quick("gpu_smoke", tmp_path)
    smoke = result["smoke"]
    assert smoke["returncode"] == 0 and smoke["checkpoint"] and smoke["metrics"], smoke["tail"]
    assert ("trainer=gpu" if torch.cuda.is_available() else "trainer.precision=bf16-mixed") in smoke["command"]
    ((size, table),) = result["throughput_img_per_s"].items()
    assert set(table) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert all(v > 0 for v in table.values())
    peaks = result["peak_memory_gib"][size]
    assert all((v > 0) if torch.cuda.is_available() else v is None for v in peaks.values())


@pytest.mark.slow  # writes a 2-member bundle (one ONNX export, ~10 s) and times 15 configurations: ~20 s on 2 cores
def test_inference_quick(tmp_path):
    threads = torch.get_num_threads()
    result = quick("inference", tmp_path)
    assert torch.get_num_threads() == threads  # its --threads 1 does not leak into the caller
    rows = result["configurations"]
    backends = {
        f"{b}{kind}" for b in ("torch", "onnx") for kind in ("", "_e2e", "_ensemble", "_single", "_ensemble_single")
    }
    assert set(rows) == {"bare_1x", "bare_2x", "bare_2x_b1", "bare_2x_cl", "torch_single_cam"} | backends
    for name, row in rows.items():
        assert row["images_per_s"] > 0 and row["ms_per_image"] > 0, name
        assert row["images_per_s_min"] <= row["images_per_s"] <= row["images_per_s_max"], name
        assert (row["ratio_to_baseline"] is None) == (row["baseline"] is None), name
    assert rows["torch_ensemble"]["members"] == rows["onnx_ensemble_single"]["members"] == result["members"] == 2
    assert rows["torch"]["batch"] == 4 and rows["onnx_single"]["batch"] == 1
    assert set(result["targets"]) == {"predict_ge_0.9x_bare", "onnx_ge_torch", "single_cam_under_150ms"}
    assert all(isinstance(v, bool) for v in result["targets"].values())


@pytest.mark.slow  # skintumor serve in a subprocess, ~350 requests from 2 clients: ~30 s on 2 cores
def test_serve_load_quick(tmp_path):
    result = quick("serve_load", tmp_path)
    assert result["errors"] == 0 and result["clients"] == 2
    for name in ("cam", "plain"):
        phase = result["phases"][name]
        assert phase["requests"] > 0 and phase["requests_per_s"] > 0 and 0 < phase["p50_ms"] <= phase["p95_ms"]
    memory = result["memory"]
    assert memory["requests"] == 200 and memory["errors"] == 0
    assert 0 < memory["rss_mib_before"] and 0 < memory["rss_mib_after"] and abs(memory["rss_growth_percent"]) < 50


def test_explain_speed_quick(tmp_path):
    threads = torch.get_num_threads()
    result = quick("explain_speed", tmp_path)
    assert torch.get_num_threads() == threads  # its one thread does not leak into the caller
    assert result["images"] == 12 and result["size"] == 32 and result["road_images"] == 2 and result["threads"] == 1
    seconds = result["seconds"]
    assert all(seconds[k] > 0 for k in ("baseline", "maps", "explain_without_road", "road"))
    assert seconds["explain_total"] == pytest.approx(seconds["explain_without_road"] + seconds["road"], abs=0.01)
    assert result["road_seconds_per_image"] == pytest.approx(seconds["road"] / 2, rel=0.05)
    assert set(result["targets"]) == {"explain_le_2x_maps", "maps_le_8x_baseline"}
    assert all(isinstance(v, bool) for v in result["targets"].values())
    assert (tmp_path / "explain_speed_quick" / "run" / "explain" / "agreement.json").is_file()
