"""The Hydra entry point end to end, on tiny images in tmp_path."""

import json
import shutil

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from skintumor.evaluate.finished_run import FinishedRun
from skintumor.models.checkpoint import load_classifier

from conftest import CLASSES, REPO, run_train, tiny_overrides

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
    assert cfg.model.net.attention and not cfg.model.net.lesion_decoder


def test_run_directory_contract(tiny_run):
    for name in (
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "predictions_test.csv",
        "metrics_test.json",
        "metrics_val.json",
        "split.json",
        "manifest.csv",
        ".hydra/config.yaml",
        "csv/metrics.csv",
    ):
        assert (tiny_run / name).is_file(), name
    split = json.loads((tiny_run / "split.json").read_text())
    preds = pd.read_csv(tiny_run / "predictions_test.csv")
    assert len(preds) == len(split["test"]) and preds["path"].is_unique  # one row per test image
    assert list(preds.columns) == [
        "path",
        "patient_id",
        "group_id",
        "label",
        *(f"p_{c}" for c in CLASSES),
        "pred",
        *(f"score_{c}" for c in CLASSES),
    ]
    assert preds[[f"p_{c}" for c in CLASSES]].sum(axis=1).round(4).eq(1).all()
    manifest = pd.read_csv(tiny_run / "manifest.csv")
    assert set(preds["path"]) == set(manifest["path"].iloc[split["test"]])
    assert not set(manifest["patient_id"].iloc[split["test"]]) & set(manifest["patient_id"].iloc[split["train"]])
    metrics = json.loads((tiny_run / "metrics_test.json").read_text())
    assert {"test/auroc_macro", "test/bal_acc", "test/sens_pilomatricoma", "test/spec_cyst"} <= set(metrics)
    logged = pd.read_csv(tiny_run / "csv" / "metrics.csv")
    assert {
        "val/auroc_macro",
        "val/sens_lipoma",
        "train/loss",
        "train/lesion_loss",
        "train/mask_loss",
        "val/gate2_spread",
    } <= set(logged.columns)
    # experiment=recipe tests the final epoch: metrics_val.json holds its validation scores
    chosen = json.loads((tiny_run / "metrics_val.json").read_text())
    assert chosen["checkpoint"] == metrics["checkpoint"] == "checkpoints/last.ckpt"
    final = logged.dropna(subset=["val/auroc_macro"]).iloc[-1]
    assert chosen["val/auroc_macro"] == pytest.approx(final["val/auroc_macro"], abs=1e-4)


def test_checkpoint_rebuilds_without_pickles(tiny_run):
    model = load_classifier(tiny_run / "checkpoints" / "last.ckpt")
    assert model.hparams.classes == list(CLASSES)
    assert model.hparams.image_size == 32 and model.hparams.net["attention"] is True
    assert model.model.lesion_decoder is not None and model.hparams.tta == "hflip"
    assert model.hparams.loss["alpha"] is None  # the recipe's balanced sampler evens the classes instead


def test_test_checkpoint_last_validates_decides_and_tests_the_final_epoch(tiny_run):
    val, test = (json.loads((tiny_run / f"metrics_{part}.json").read_text()) for part in ("val", "test"))
    assert val["checkpoint"] == test["checkpoint"] == "checkpoints/last.ckpt"
    last = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] <= last["epoch"] == 1
    offsets = [val[f"decision_offset_{c}"] for c in CLASSES]
    assert any(offsets) and last["state_dict"]["decision_offsets"].tolist() == pytest.approx(offsets)
    assert not best["state_dict"]["decision_offsets"].any()  # chosen for the tested checkpoint only
    assert FinishedRun.open(tiny_run).checkpoint == "last.ckpt"
    assert FinishedRun.open(tiny_run, "best.ckpt").checkpoint == "best.ckpt"


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_run, masked_manifest, tmp_path):
    # the shared run as if stopped after its two epochs, before its test: the same command continues it
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("metrics_*.json", "predictions_test.csv", "explain"))
    rows_before = pd.read_csv(run / "csv" / "metrics.csv")
    proc = run_train(
        *tiny_overrides(masked_manifest), "trainer.max_epochs=3", "explain.enabled=false", f"hydra.run.dir={run}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2  # one more epoch, from where it stopped
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    rows_after = pd.read_csv(run / "csv" / "metrics.csv")
    assert len(rows_after) > len(rows_before)  # the resumed run's rows are added to the history, not instead of it
    pd.testing.assert_frame_equal(rows_after.iloc[: len(rows_before)][rows_before.columns], rows_before)
    assert "resuming the interrupted run" in (run / "train.log").read_text()
    assert (run / "predictions_test.csv").is_file()


@pytest.mark.slow
def test_weights_only_checkpoints_are_a_third_and_still_load(tiny_run, masked_manifest, tmp_path):
    # the disk saver the README offers: no Adam state (so no resuming), same classifier
    proc = run_train(
        *tiny_overrides(masked_manifest),
        "test_checkpoint=best",
        "callbacks.model_checkpoint.save_weights_only=true",
        f"hydra.run.dir={tmp_path / 'w'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    slim, full = tmp_path / "w" / "checkpoints" / "best.ckpt", tiny_run / "checkpoints" / "last.ckpt"
    assert slim.stat().st_size < 0.4 * full.stat().st_size
    model = load_classifier(slim)
    assert model.hparams.classes == list(CLASSES)
    assert json.loads((tmp_path / "w" / "metrics_test.json").read_text())["checkpoint"] == "checkpoints/best.ckpt"


def test_a_directory_of_no_run_is_never_written_into(tiny_folder, tmp_path, capsys):
    checkpoint = tmp_path / "r" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"a user's run")
    err = user_error_in_process(capsys, tmp_path, "data=folder", f"data.root={tiny_folder}", "debug=fdr")
    assert "not a run directory (it holds checkpoints)" in err and checkpoint.read_bytes() == b"a user's run"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["checkpoints"]


def test_fast_dev_run_plain_resnet(tiny_folder, tmp_path):
    from skintumor.train import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "data=folder",
                f"data.root={tiny_folder}",
                "model=resnet18",
                "data.image_size=32",
                "data.n_folds=3",
                "debug=fdr",
                f"paths.output_dir={tmp_path / 'fdr'}",
            ],
        )
    train(cfg)
    assert len(pd.read_csv(tmp_path / "fdr" / "predictions_test.csv")) > 0


def test_bad_data_is_one_clear_line(tmp_path):
    (tmp_path / "data" / "cyst").mkdir(parents=True)
    (tmp_path / "data" / "cyst" / "a.png").write_bytes(b"")
    proc = run_train("data=folder", f"data.root={tmp_path / 'data'}", "debug=fdr", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2
    assert "a.png: file is empty" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # a run that never started leaves no directory behind


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


@pytest.mark.parametrize(
    "setting, message",
    [
        ("data.sampler=uniform", "config error: data.sampler must be one of"),
        ("model.tta=vflip", "config error: model.tta must be one of"),
        ("+data.options.patient_csv=p.csv", "config error: data source 'folder' has no option patient_csv"),
        ("test_checkpoint=final", "config error: test_checkpoint=final: must be best or last"),
        (
            "test_checkpoint=last callbacks.last_checkpoint=null",
            "config error: test_checkpoint=last needs callbacks.last_checkpoint",
        ),
    ],
)
def test_a_setting_that_cannot_work_is_one_clear_line(tiny_folder, tmp_path, capsys, setting, message):
    err = user_error_in_process(
        capsys,
        tmp_path,
        "data=folder",
        f"data.root={tiny_folder}",
        "data.image_size=32",
        "data.n_folds=3",
        "debug=fdr",
        *setting.split(),
    )
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_weights_file_is_one_clear_line(tiny_folder, tmp_path, capsys):
    err = user_error_in_process(
        capsys,
        tmp_path,
        "data=folder",
        f"data.root={tiny_folder}",
        "data.image_size=32",
        "data.n_folds=3",
        "debug=fdr",
        f"model.net.weights_path={tmp_path / 'resnet18.pth'}",
    )
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
        return L.Trainer(
            accelerator="cpu",
            precision=precision,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )

    monkeypatch.setattr(train, "bf16_is_emulated", lambda: True)
    assert "emulated" in train.emulated_bf16_warning(trainer("bf16-mixed"))
    assert train.emulated_bf16_warning(trainer("32-true")) is None
    monkeypatch.setattr(train, "bf16_is_emulated", lambda: False)
    assert train.emulated_bf16_warning(trainer("bf16-mixed")) is None
