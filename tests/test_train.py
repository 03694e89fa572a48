"""The Hydra entry point end to end, on tiny images in tmp_path."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO, run_train, train_tiny
from skintumor.models.module import load_classifier

CONF = REPO / "conf"


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_every_config_group_option_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group in ("data", "augment", "model", "trainer", "logger", "callbacks", "experiment", "debug"):
            for option in _options(group):
                overrides = [f"{group}={option}", "data.root=/tmp"]
                if group == "data" and option == "csv":
                    overrides.append("data.options.manifest=/tmp/m.csv")
                cfg = compose(config_name="train", overrides=overrides)
                assert cfg.model._target_.endswith("SkinTumorClassifier")
                assert cfg.data.source


def test_study_values_in_experiment_paper():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=paper"])
    assert cfg.model.optimizer.name == "adam" and cfg.model.optimizer.lr == 1e-4
    assert (cfg.model.scheduler.step_size, cfg.model.scheduler.gamma) == (7, 0.1)
    assert cfg.trainer.max_epochs == 30 and cfg.data.batch_size == 16 and cfg.data.n_folds == 5
    assert cfg.model.net.attention and cfg.model.net.aggregation == "ft"


@pytest.fixture(scope="module")
def trained_run(tiny_folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    proc = train_tiny(tiny_folder, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_run_directory_contract(trained_run, tiny_folder):
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "predictions_test.csv", "metrics_test.json",
                 "split.json", "manifest.csv", ".hydra/config.yaml", "csv/metrics.csv"):
        assert (trained_run / name).is_file(), name
    split = json.loads((trained_run / "split.json").read_text())
    preds = pd.read_csv(trained_run / "predictions_test.csv")
    assert len(preds) == len(split["test"]) and preds["path"].is_unique  # one row per test image
    assert list(preds.columns) == ["path", "patient_id", "group_id", "label", "p_cyst", "p_lipoma",
                                   "p_pilomatricoma", "pred"]
    assert preds[["p_cyst", "p_lipoma", "p_pilomatricoma"]].sum(axis=1).round(4).eq(1).all()
    manifest = pd.read_csv(trained_run / "manifest.csv")
    assert set(preds["path"]) == set(manifest["path"].iloc[split["test"]])
    assert not set(manifest["patient_id"].iloc[split["test"]]) & set(manifest["patient_id"].iloc[split["train"]])
    metrics = json.loads((trained_run / "metrics_test.json").read_text())
    assert metrics["checkpoint"] == "checkpoints/best.ckpt"
    assert {"test/auroc_macro", "test/bal_acc", "test/sens_pilomatricoma", "test/spec_cyst"} <= set(metrics)
    logged = pd.read_csv(trained_run / "csv" / "metrics.csv")
    assert {"val/auroc_macro", "val/sens_lipoma", "train/loss"} <= set(logged.columns)
    # metrics_val.json: the selected checkpoint's validation scores, the best the selection saw
    chosen = json.loads((trained_run / "metrics_val.json").read_text())
    assert chosen["checkpoint"] == "checkpoints/best.ckpt"
    assert chosen["val/auroc_macro"] == pytest.approx(logged["val/auroc_macro"].max(), abs=1e-4)


def test_checkpoint_rebuilds_without_pickles(trained_run):
    model = load_classifier(trained_run / "checkpoints" / "best.ckpt")
    assert model.hparams.classes == ["cyst", "lipoma", "pilomatricoma"]
    assert model.hparams.image_size == 32 and model.hparams.net["attention"] is True
    alpha = model.hparams.loss["alpha"]
    assert len(alpha) == 3


def test_last_checkpoint_is_the_final_epoch_and_resumes(tiny_folder, tmp_path):
    # a selector that always keeps epoch 0, so last.ckpt must come from elsewhere (Lightning >= 2.6
    # rewrites save_last's file only when the monitored checkpoint improves)
    run, pick_first = tmp_path / "r", ("callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min")
    proc = train_tiny(tiny_folder, run, *pick_first)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def epoch(name):
        return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["epoch"]

    assert (epoch("best.ckpt"), epoch("last.ckpt")) == (0, 1)
    assert json.loads((run / "metrics_val.json").read_text())["checkpoint"] == "checkpoints/best.ckpt"
    proc = train_tiny(tiny_folder, run, *pick_first, "trainer.max_epochs=3", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (epoch("best.ckpt"), epoch("last.ckpt")) == (0, 2)  # one more epoch, from where it stopped
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_weights_only_checkpoints_are_a_third_and_still_load(trained_run, tiny_folder, tmp_path):
    # the disk saver the README offers: no Adam state (so no resuming), same classifier
    proc = train_tiny(tiny_folder, tmp_path / "w", "callbacks.model_checkpoint.save_weights_only=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    slim, full = tmp_path / "w" / "checkpoints" / "best.ckpt", trained_run / "checkpoints" / "best.ckpt"
    assert slim.stat().st_size < 0.4 * full.stat().st_size
    model = load_classifier(slim)
    assert model.hparams.classes == ["cyst", "lipoma", "pilomatricoma"]
    assert json.loads((tmp_path / "w" / "metrics_test.json").read_text())["checkpoint"] == "checkpoints/best.ckpt"


def test_run_directory_is_never_overwritten(trained_run, tiny_folder):
    before = (trained_run / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    proc = run_train("data=folder", f"data.root={tiny_folder}", "debug=fdr", f"hydra.run.dir={trained_run}")
    assert proc.returncode == 2 and "never overwritten" in proc.stderr
    assert (trained_run / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before


def test_fast_dev_run_plain_resnet(tiny_folder, tmp_path):
    proc = run_train("data=folder", f"data.root={tiny_folder}", "model=resnet18", "data.image_size=32",
                "data.n_folds=3", "debug=fdr", f"hydra.run.dir={tmp_path / 'fdr'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "fdr" / "predictions_test.csv")) > 0


def test_bad_data_is_one_clear_line(tmp_path):
    (tmp_path / "data" / "cyst").mkdir(parents=True)
    (tmp_path / "data" / "cyst" / "a.png").write_bytes(b"")
    proc = run_train("data=folder", f"data.root={tmp_path / 'data'}", "debug=fdr", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2
    assert "a.png: file is empty" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("setting, message", [
    ("data.sampler=uniform", "config error: data.sampler must be one of"),
    ("model.tta=vflip", "config error: model.tta must be one of"),
    ("+data.options.patient_csv=p.csv", "config error: data source 'folder' has no option patient_csv"),
])
def test_a_setting_that_cannot_work_is_one_clear_line(tiny_folder, tmp_path, setting, message):
    proc = run_train("data=folder", f"data.root={tiny_folder}", "data.image_size=32", "data.n_folds=3", "debug=fdr",
                     setting, f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_weights_file_is_one_clear_line(tiny_folder, tmp_path):
    proc = run_train("data=folder", f"data.root={tiny_folder}", "data.image_size=32", "data.n_folds=3", "debug=fdr",
                f"model.net.weights_path={tmp_path / 'resnet18.pth'}", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2
    assert "resnet18.pth: weights file not found" in proc.stderr and "Traceback" not in proc.stderr
