"""Faults: killed runs resume with nothing lost, failed folds cost only themselves, no run writes into a
directory that is not its own (skintumor.rundir), and parallel launchers really launch."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from skintumor.errors import DataError
from skintumor.hydra_callbacks import CrossValidationReport
from skintumor.loggers import ResumableCSVLogger
from skintumor.rundir import check_checkpoint, claim_run_dir, run_start, run_state

from conftest import REPO, run_train, snapshot, tiny_overrides


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    base = str(tmp_path / "runs" / "2026-12-05_10-00-00")
    code = f"from skintumor.rundir import claim_run_dir; print(claim_run_dir({base!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(5)]
    claimed = [p.communicate()[0].strip() for p in procs]
    assert len(set(claimed)) == 5 and base in claimed and f"{base}_5" in claimed
    assert all(Path(p).is_dir() for p in claimed)
    assert claim_run_dir(base) == claim_run_dir(base)  # asked twice in one process: one directory


def _cfg(run_dir: Path, manifest: Path, **extra):
    """The training config of a tiny run (``tiny_overrides``) whose directory is ``run_dir``."""
    from hydra import compose, initialize_config_dir

    overrides = [*tiny_overrides(manifest), *(f"{k}={v}" for k, v in extra.items()), f"paths.output_dir={run_dir}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_a_run_continues_only_its_own_directory_with_its_own_settings(tiny_run, masked_manifest, tmp_path):
    assert (
        run_state(tiny_run) == "finished" and run_start(_cfg(tiny_run, masked_manifest), tiny_run).state == "finished"
    )
    a = tmp_path / "a"
    shutil.copytree(tiny_run, a, ignore=shutil.ignore_patterns("metrics_test.json"))
    assert run_state(a) == "interrupted"
    start = run_start(_cfg(a, masked_manifest), a)
    assert start.resume_from == str(a / "checkpoints" / "last.ckpt")
    # resuming run A into run B's directory (ckpt_path of A) is refused, B untouched
    b = tmp_path / "b"
    shutil.copytree(tiny_run, b, ignore=shutil.ignore_patterns("metrics_test.json"))
    before = snapshot(b)
    with pytest.raises(DataError, match="not a checkpoint of the run in"):
        run_start(_cfg(b, masked_manifest, ckpt_path=a / "checkpoints" / "last.ckpt"), b)
    with pytest.raises(DataError, match="resumes only into the directory its checkpoint came from"):
        run_start(_cfg(tmp_path / "new", masked_manifest, ckpt_path=a / "checkpoints" / "last.ckpt"), tmp_path / "new")
    # other settings than the run started with: refused, naming them
    with pytest.raises(DataError, match=r"data.image_size, .*seed differ from its run.yaml"):
        run_start(_cfg(b, masked_manifest, **{"seed": 7, "data.image_size": 48}), b)
    assert snapshot(b) == before


def test_a_data_folder_is_never_a_run_directory(masked_manifest, tmp_path):
    with pytest.raises(DataError, match="not a run directory"):
        run_start(_cfg(masked_manifest.parent, masked_manifest), masked_manifest.parent)


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign", "code"])
def test_a_bad_resume_checkpoint_is_one_line_and_runs_no_code(tiny_run, tmp_path, kind):
    path, marker = tmp_path / "last.ckpt", tmp_path / "ran"
    if kind == "truncated":
        path.write_bytes((tiny_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "code":
        path.write_bytes(_pickle_that_touches(marker))
    expected = {
        "missing": "checkpoint not found",
        "truncated": "not a readable checkpoint",
        "foreign": "not a Lightning training checkpoint (no state_dict, epoch, loops)",
        "code": "never loaded: unpickling could run code",
    }[kind]
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
        check_checkpoint(path)
    assert "\n" not in str(err.value) and not marker.exists()


def _pickle_that_touches(marker: Path) -> bytes:
    import pickle

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps({"state_dict": Touch()})


def test_the_csv_log_keeps_every_row_across_a_resume(tmp_path):
    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    second = ResumableCSVLogger(tmp_path, name="csv", version="")  # the resumed run's logger
    second.log_metrics({"train/loss": 0.5, "val/auroc": 0.9}, step=1)
    second.save()
    rows = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert rows["train/loss"].tolist() == [1.0, 0.5] and rows["val/auroc"].isna().tolist() == [True, False]


def test_a_relaunched_sweep_keeps_the_first_multirun_yaml(tmp_path):
    (tmp_path / "multirun.yaml").write_text("first launch\n")
    CrossValidationReport().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    kept = list(tmp_path.glob("multirun_*.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == "first launch\n" and not (tmp_path / "multirun.yaml").exists()


# -- slow: real processes killed, sweeps re-run, launchers ------------------------------------------------


def _sha(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.name != "train.log"
    }


def _kill_when(proc: subprocess.Popen, path: Path, after: float = 1.0, limit: float = 240) -> None:
    """SIGKILL ``proc`` ``after`` seconds after ``path`` appears (a checkpoint: the run is mid-training)."""
    deadline = time.time() + limit
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _command(*overrides) -> list[str]:
    return [sys.executable, "-m", "skintumor.train", *overrides]


def _longer(manifest: Path, epochs: int = 3) -> list[str]:
    # 64 px and batch 4: a few seconds per epoch, time to kill the run between its checkpoints
    return [
        *tiny_overrides(manifest),
        "data.image_size=64",
        "data.batch_size=4",
        f"trainer.max_epochs={epochs}",
        "explain.enabled=false",
    ]


@pytest.mark.slow
def test_a_killed_run_resumes_with_its_whole_history(masked_manifest, tmp_path):
    run = tmp_path / "run"
    command = _command(*_longer(masked_manifest), f"hydra.run.dir={run}")
    _kill_when(subprocess.Popen(command, cwd=REPO), run / "checkpoints" / "last.ckpt")
    assert run_state(run) == "interrupted" and not (run / "predictions_test.csv").exists()
    before = pd.read_csv(run / "csv" / "metrics.csv")
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = pd.read_csv(run / "csv" / "metrics.csv")
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before)  # every pre-kill row kept
    trained = after.dropna(subset=["train/loss"])["epoch"]
    assert sorted(trained.unique()) == [0, 1, 2]  # the same epochs as an unbroken run
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert "resuming the interrupted run" in (run / "train.log").read_text()
    assert (run / "predictions_test.csv").is_file() and run_state(run) == "finished"


@pytest.mark.slow
def test_a_sweep_with_a_failed_and_a_killed_fold_completes_when_run_again(masked_manifest, tmp_path):
    data = masked_manifest.parent
    for k in (0, 2):  # fold 1's manifest is missing: that fold fails, the others go on
        shutil.copy(masked_manifest, data / f"manifest_{k}.csv")
    sweep = tmp_path / "sweep"
    args = [
        *_longer(masked_manifest, epochs=2),
        f"data.options.manifest={data}/manifest_${{data.fold}}.csv",
        f"hydra.sweep.dir={sweep}",
        "hydra.callbacks.cv_report.n_boot=50",
    ]
    first = subprocess.run(_command("-m", "data.fold=0,1", *args), cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 1  # a fold failed: the command says so, after the report
    assert "fold_1 failed: DataError" in first.stderr and "Traceback" not in first.stderr
    report = (sweep / "report.md").read_text()
    assert "fold 1 is missing" in report and "manifest_1.csv" in report  # the report names the fold and why
    finished = _sha(sweep / "fold_0")

    shutil.copy(masked_manifest, data / "manifest_1.csv")  # the user fixes fold 1, runs 3 folds; fold 2 is killed
    _kill_when(
        subprocess.Popen(_command("-m", "data.fold=0,1,2", *args), cwd=REPO),
        sweep / "fold_2" / "checkpoints" / "last.ckpt",
    )
    assert run_state(sweep / "fold_1") == "finished" and run_state(sweep / "fold_2") == "interrupted"

    again = subprocess.run(_command("-m", "data.fold=0,1,2", *args), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _sha(sweep / "fold_0") == finished  # finished folds are skipped, their files unchanged
    assert "resuming the interrupted run" in (sweep / "fold_2" / "train.log").read_text()
    metrics = json.loads((sweep / "metrics_cv.json").read_text())
    assert not metrics["folds_missing"] and len(list(sweep.glob("multirun_*.yaml"))) == 2
    assert not list(sweep.glob("fold_*/error.txt")) and list((sweep / "fold_1").glob("error_*.txt"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "submitit_local"])
def test_parallel_launchers_train_folds_and_write_the_report(masked_manifest, tmp_path, launcher):
    sweep = tmp_path / launcher
    proc = run_train(
        "-m",
        "data.fold=0,1",
        *tiny_overrides(masked_manifest),
        "trainer.max_epochs=1",
        "explain.enabled=false",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
        "hydra.callbacks.cv_report.n_boot=50",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all((sweep / f"fold_{k}" / "predictions_test.csv").is_file() for k in (0, 1))
    assert (sweep / "report.md").is_file() and (sweep / "report.html").is_file()


@pytest.mark.slow
def test_same_seed_same_config_gives_byte_identical_predictions_on_cpu(tiny_run, masked_manifest, tmp_path):
    proc = run_train(*tiny_overrides(masked_manifest), f"hydra.run.dir={tmp_path / 'again'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("predictions_test.csv", "split.json", "manifest.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_run / name).read_bytes(), name


# trainer=ddp with 2 CPU processes (gloo), batch 4 each: the effective batch of the shared tiny run (8)
DDP_ON_CPU = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.sync_batchnorm=false",
    "data.batch_size=4",
    "explain.enabled=false",
]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_complete_run(tiny_run, masked_manifest, tmp_path):
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from skintumor.evaluate.finished_run import FinishedRun

    run = tmp_path / "ddp"
    proc = run_train(*tiny_overrides(masked_manifest), *DDP_ON_CPU, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # rank 0 only
    assert (run / "train_rank1.log").is_file() and not list(run.glob("train_ddp_process_*"))
    split, saved = json.loads((run / "split.json").read_text()), pd.read_csv(run / "predictions_test.csv")
    manifest = pd.read_csv(run / "manifest.csv")
    # complete, once, in manifest order (DistributedSampler's padding repeats removed)
    assert saved["path"].tolist() == manifest["path"].iloc[sorted(split["test"])].tolist()
    # metrics synced over the ranks (torchmetrics): the logged test AUROC is the whole fold's
    classes = json.loads((run / "split.json").read_text())["classes"]
    columns = [f"score_{c}" if f"score_{c}" in saved else f"p_{c}" for c in classes]
    labels = saved["label"].map({c: i for i, c in enumerate(classes)})
    auroc = roc_auc_score(labels, saved[columns].to_numpy(), multi_class="ovr", average="macro")
    logged = json.loads((run / "metrics_test.json").read_text())
    assert logged["test/auroc_macro"] == pytest.approx(auroc, abs=1e-6)
    # the saved predictions are what one process computes with the tested checkpoint
    finished = FinishedRun.open(run)
    _, probs = finished.classifier.predict_loader(finished.loader("test"))
    assert np.abs(probs - saved[[f"p_{c}" for c in classes]].to_numpy()).max() < 1e-5
    # and the training matches a single process with the same effective batch, within the stated tolerance:
    # not bit for bit, the distributed sampler draws another order
    single = json.loads((tiny_run / "metrics_test.json").read_text())
    for key in ("test/auroc_macro", "test/bal_acc"):
        assert abs(logged[key] - single[key]) <= 0.1, key
    csv_log = pd.read_csv(run / "csv" / "metrics.csv")
    assert sorted(csv_log.dropna(subset=["train/loss"])["epoch"].unique()) == [0, 1]


@pytest.mark.slow
def test_ddp_inside_a_multirun_runs_each_job_not_the_sweep(masked_manifest, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(
        "-m",
        "data.fold=1",
        *tiny_overrides(masked_manifest),
        *DDP_ON_CPU,
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        "hydra.callbacks.cv_report.n_boot=50",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / "fold_1" / "predictions_test.csv").is_file() and (sweep / "fold_1" / "train_rank1.log").is_file()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["figures", "fold_1"]  # no sweep per rank
