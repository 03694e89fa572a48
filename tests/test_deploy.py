"""A trained model used on new scans: the bundle (export, safe loading), predict, the overlays."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skintumor.deploy.bundle import export_bundle, load_bundle
from skintumor.deploy.predict import Predictor, collect_inputs, predictions_table
from skintumor.errors import DataError
from skintumor.evaluate.finished_run import FinishedRun
from skintumor.explain.overlay import JET, overlay_image
from skintumor.predict import export_main, predict_main

from conftest import CLASSES


@pytest.fixture(scope="module")
def bundle_dir(tiny_run, tmp_path_factory) -> Path:
    return export_bundle(tiny_run, tmp_path_factory.mktemp("bundle") / "model")


def labelled_inputs(tiny_run, directory: Path) -> Path:
    """A labelled CSV manifest of the run's test-fold images, with absolute paths."""
    split = json.loads((tiny_run / "split.json").read_text())
    manifest = pd.read_csv(tiny_run / "manifest.csv").iloc[split["test"]]
    manifest = manifest.assign(path=[str(Path(split["root"]) / p) for p in manifest["path"]])
    manifest[["path", "label", "patient_id"]].to_csv(directory / "inputs.csv", index=False)
    return directory / "inputs.csv"


def test_bundle_describes_itself_and_holds_no_pickle(bundle_dir, tiny_run):
    meta = json.loads((bundle_dir / "model.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["preprocessing"]["image_size"] == 32
    assert meta["preprocessing"]["scan_area_crop"] is False and meta["decision"]["tta"] == "hflip"
    assert [m["name"] for m in meta["members"]] == ["run"] and meta["members"][0]["checkpoint"] == "last.ckpt"
    assert meta["training_data"]["images"] == 36 and sum(meta["training_data"]["images_per_class"].values()) == 36
    assert meta["software"]["skintumor"] and "research use only" in meta["intended_use"].lower()
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["model.json", "run.safetensors"]
    with open(bundle_dir / "run.safetensors", "rb") as f:
        assert b"pickle" not in f.read(200) and int.from_bytes(f.read(0) or b"\0", "little") == 0
    member = load_bundle(bundle_dir).members[0].classifier
    tested = FinishedRun.open(tiny_run).classifier
    for key, value in tested.state_dict().items():
        assert np.array_equal(value.numpy(), member.state_dict()[key].numpy()), key
    assert member.decision_offsets.any()  # the offsets chosen on validation travel with the weights


def test_predict_reproduces_the_runs_test_predictions(bundle_dir, tiny_run, tmp_path):
    """Parity: the deployment path preprocesses and decides exactly as evaluation did."""
    predictor = Predictor(load_bundle(bundle_dir))
    results = predictor.predict_files(
        collect_inputs([labelled_inputs(tiny_run, tmp_path)]), batch_size=5, progress=False
    )
    run = FinishedRun.open(tiny_run)
    _, probs = run.classifier.predict_loader(run.loader("test"))
    _, scores = run.classifier.predict_loader(run.loader("test"), decide=False)
    got = np.stack([r.probs for r in results])
    assert np.abs(got - probs).max() < 1e-5 and np.abs(np.stack([r.scores for r in results]) - scores).max() < 1e-5
    saved = pd.read_csv(tiny_run / "predictions_test.csv")
    assert [r.pred for r in results] == saved["pred"].tolist()
    assert all(r.spread.max() == 0 for r in results)  # one member: nothing to disagree


def test_onnx_backend_decides_as_torch(tiny_run, tmp_path):
    """export --onnx: each member's whole decision path (TTA, softmax, offsets) runs in ONNX Runtime."""
    bundle = load_bundle(export_bundle(tiny_run, tmp_path / "model", onnx=True))
    assert bundle.members[0].onnx.name == "run.onnx"
    inputs = collect_inputs([labelled_inputs(tiny_run, tmp_path)])
    torch_results = Predictor(bundle).predict_files(inputs, progress=False)
    onnx_results = Predictor(bundle, backend="onnx").predict_files(inputs, progress=False)
    gap = max(np.abs(a.probs - b.probs).max() for a, b in zip(torch_results, onnx_results))
    assert gap < 1e-4 and [r.pred for r in torch_results] == [r.pred for r in onnx_results]
    with pytest.raises(DataError, match="has no ONNX graphs"):
        Predictor(load_bundle(export_bundle(tiny_run, tmp_path / "plain")), backend="onnx")


def test_one_pass_prediction_with_maps_equals_prediction_then_the_librarys_grad_cam():
    """predict --cam decides and explains with one forward pass per member; the probabilities and the
    maps are those of predict_batch and of pytorch-grad-cam's Grad-CAM of the ensemble's decision."""
    import torch

    from benchmarks.common import recipe_classifier
    from skintumor.deploy.bundle import Bundle, Member

    members = [Member(f"m{i}", recipe_classifier(64, seed=i)) for i in range(2)]
    meta = {
        "classes": list(CLASSES),
        "preprocessing": {"image_size": 64, "mean": 0.449, "std": 0.226, "scan_area_crop": False},
    }
    predictor = Predictor(Bundle(Path("."), meta, members))
    x = torch.randn(3, 1, 64, 64)
    probs, scores, maps = predictor.predict_and_explain(x)
    want_probs, want_scores = predictor.predict_batch(x)
    assert np.abs(probs - want_probs).max() < 1e-5 and np.abs(scores - want_scores).max() < 1e-5
    want_maps = predictor.cam(x, want_probs.mean(axis=0).argmax(axis=1).tolist())
    assert maps.shape == (3, 64, 64) and np.abs(maps - want_maps).max() < 1e-4 and maps.std() > 0


def test_a_sweep_becomes_an_ensemble_whose_members_must_agree_on_the_input(tiny_run, tmp_path):
    sweep = tmp_path / "sweep"
    for fold in (0, 1):
        shutil.copytree(tiny_run, sweep / f"fold_{fold}")
    bundle = load_bundle(export_bundle(sweep, tmp_path / "model"))
    assert [m.name for m in bundle.members] == ["fold_0", "fold_1"]
    config = sweep / "fold_1" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("crop: false", "crop: true"))
    with pytest.raises(DataError, match="fold_1: its classes or preprocessing differ"):
        export_bundle(sweep, tmp_path / "other")


def test_export_never_overwrites_and_names_what_is_missing(tiny_run, bundle_dir, tmp_path, capsys):
    assert export_main([str(tiny_run), "--out", str(bundle_dir)]) == 2
    assert export_main([str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty" in err and "no finished training run" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("flip", "checksum differs from model.json"),
        ("truncate", "checksum differs from model.json"),
        ("json", "not readable JSON"),
        ("foreign", "not a skintumor model bundle"),
        ("missing", "run.safetensors: not found"),
    ],
)
def test_a_damaged_bundle_is_refused_in_one_line(bundle_dir, tmp_path, damage, problem):
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    weights, meta = copy / "run.safetensors", copy / "model.json"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "json":
        meta.write_text("{not json")
    elif damage == "foreign":
        meta.write_text(json.dumps({"format": "other"}))
    else:
        weights.unlink()
    with pytest.raises(DataError, match=problem):
        load_bundle(copy)


def test_predict_command_keeps_going_past_a_bad_file_and_says_so(bundle_dir, tiny_run, tmp_path, capsys):
    scans = tmp_path / "scans"
    split = json.loads((tiny_run / "split.json").read_text())
    for name in pd.read_csv(tiny_run / "manifest.csv")["path"].iloc[split["test"]][:3]:
        shutil.copy(Path(split["root"]) / name, scans / name if scans.exists() else scans.mkdir() or scans / name)
    (scans / "broken.png").write_text("not an image")
    (scans / "notes.txt").write_text("skipped: not an image")
    code = predict_main(
        [
            str(bundle_dir),
            str(scans),
            "--out",
            str(tmp_path / "p.csv"),
            "--cam",
            str(tmp_path / "cams"),
            "--no-progress",
        ]
    )
    assert code == 1  # some inputs failed
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(table) == 4 and (table["status"] == "ok").sum() == 3
    bad = table[table["status"] == "error"].iloc[0]
    assert bad["path"].endswith("broken.png") and "broken.png: not a readable image" in bad["message"]
    assert {f"p_{c}" for c in CLASSES} | {f"sd_{c}" for c in CLASSES} <= set(table.columns)
    assert len(list((tmp_path / "cams").glob("*.png"))) == 3
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    # the file and the overlays are never overwritten
    assert predict_main([str(bundle_dir), str(scans), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_labelled_inputs_print_their_metrics(bundle_dir, tiny_run, tmp_path, capsys):
    assert predict_main([str(bundle_dir), str(labelled_inputs(tiny_run, tmp_path)), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "auroc_macro" in out and "95% CI" in out


def test_predictions_table_has_empty_probabilities_for_failed_inputs(bundle_dir, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    results = Predictor(load_bundle(bundle_dir)).predict_files(collect_inputs([tmp_path / "empty.png"]), progress=False)
    table = predictions_table(results, list(CLASSES))
    assert table.loc[0, "status"] == "error" and "file is empty" in table.loc[0, "message"]
    assert table[[f"p_{c}" for c in CLASSES]].isna().all(axis=None)


def test_overlay_shows_the_map_where_the_map_is_high():
    image = np.full((64, 64), 100, np.uint8)
    cam = np.zeros((64, 64), np.float32)
    cam[40:60, 4:24] = 1.0
    shown = np.asarray(overlay_image(image, cam, alpha=0.5)).astype(int)
    hot, cold = shown[45:55, 8:20].reshape(-1, 3).mean(0), shown[5:20, 40:60].reshape(-1, 3).mean(0)
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0] + 40  # red where the map is high, blue where it is low
    expected = np.rint(0.5 * 100 + 0.5 * JET[255].astype(float))
    assert np.abs(shown[50, 10] - expected).max() <= 1
    captioned = overlay_image(image, cam[::8, ::8], "lipoma 0.81")  # a coarse map is resized to the image
    assert captioned.size[0] == 64 and captioned.size[1] > 64
