"""The Hydra entry point end to end, on tiny images in tmp_path."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CLASSES, REPO, run_train, train_tiny
from skintumor.evaluate.finished_run import FinishedRun
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


def test_test_checkpoint_last_validates_decides_and_tests_the_final_epoch(tiny_folder, tmp_path):
    # experiment=recipe's setting; the selector keeps epoch 0, so the two checkpoints differ
    run = tmp_path / "r"
    proc = train_tiny(tiny_folder, run, "test_checkpoint=last", "model.decision=balanced",
                      "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min")
    assert proc.returncode == 0, proc.stderr[-3000:]
    val, test = (json.loads((run / f"metrics_{part}.json").read_text()) for part in ("val", "test"))
    assert val["checkpoint"] == test["checkpoint"] == "checkpoints/last.ckpt"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert (best["epoch"], last["epoch"]) == (0, 1)
    offsets = [val[f"decision_offset_{c}"] for c in CLASSES]
    assert last["state_dict"]["decision_offsets"].tolist() == pytest.approx(offsets)
    assert not best["state_dict"]["decision_offsets"].any()  # chosen for the tested checkpoint only
    # a reopened run (explain, ensembles) uses what was tested, and reproduces its predictions
    opened = FinishedRun.open(run)
    assert opened.checkpoint == "last.ckpt"
    _, p = opened.classifier.predict_loader(opened.loader("test", batch_size=5))
    saved = pd.read_csv(run / "predictions_test.csv").set_index("path")
    saved = saved.loc[opened.manifest.subset(opened.rows["test"]).table["path"]]
    np.testing.assert_allclose(p, saved[[f"p_{c}" for c in CLASSES]].to_numpy(), atol=2e-5)
    assert FinishedRun.open(run, "best.ckpt").checkpoint == "best.ckpt"


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


def user_error_in_process(capsys, tmp_path, *overrides) -> str:
    """What ``python -m skintumor.train OVERRIDES`` prints for a user error, without the ~10 s of a new
    process: the same config, ``train`` inside the CLI's error handling; returns stderr. The subprocess
    path itself is covered by ``test_bad_data_is_one_clear_line``."""
    from skintumor.cli import one_line_user_errors
    from skintumor.train import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"paths.output_dir={tmp_path / 'r'}"])
    with pytest.raises(SystemExit) as stopped, one_line_user_errors():
        train(cfg)
    assert stopped.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    ("data.sampler=uniform", "config error: data.sampler must be one of"),
    ("model.tta=vflip", "config error: model.tta must be one of"),
    ("+data.options.patient_csv=p.csv", "config error: data source 'folder' has no option patient_csv"),
    ("test_checkpoint=final", "config error: test_checkpoint=final: must be best or last"),
    ("test_checkpoint=last callbacks.last_checkpoint=null", "config error: test_checkpoint=last needs callbacks.last_checkpoint"),
])
def test_a_setting_that_cannot_work_is_one_clear_line(tiny_folder, tmp_path, capsys, setting, message):
    err = user_error_in_process(capsys, tmp_path, "data=folder", f"data.root={tiny_folder}", "data.image_size=32",
                                "data.n_folds=3", "debug=fdr", *setting.split())
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_weights_file_is_one_clear_line(tiny_folder, tmp_path, capsys):
    err = user_error_in_process(capsys, tmp_path, "data=folder", f"data.root={tiny_folder}", "data.image_size=32",
                                "data.n_folds=3", "debug=fdr", f"model.net.weights_path={tmp_path / 'resnet18.pth'}")
    assert "resnet18.pth: weights file not found" in err and "Traceback" not in err


def test_bf16_on_a_cpu_that_only_emulates_it_is_told(tmp_path, monkeypatch):
    import lightning as L

    from skintumor import cpu, train

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu.cpu_bf16_flags(cpuinfo) == [] and cpu.bf16_is_emulated(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu.cpu_bf16_flags(cpuinfo) == ["amx_bf16", "amx_tile", "avx512_bf16"] and not cpu.bf16_is_emulated(cpuinfo)
    assert cpu.cpu_bf16_flags(tmp_path / "absent") is None and not cpu.bf16_is_emulated(tmp_path / "absent")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "arm64")  # flags read differently there: unknown, no warning
    assert cpu.cpu_bf16_flags(cpuinfo) is None

    def trainer(precision):
        return L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)

    monkeypatch.setattr(train, "bf16_is_emulated", lambda: True)
    assert "emulated" in train.emulated_bf16_warning(trainer("bf16-mixed"))
    assert train.emulated_bf16_warning(trainer("32-true")) is None
    monkeypatch.setattr(train, "bf16_is_emulated", lambda: False)
    assert train.emulated_bf16_warning(trainer("bf16-mixed")) is None
