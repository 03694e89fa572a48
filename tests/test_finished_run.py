"""A finished run read back from its directory sees exactly what training saw."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from skintumor.errors import DataError
from skintumor.evaluate.finished_run import FinishedRun

from conftest import CLASSES


def test_reopened_run_reproduces_its_test_predictions(tiny_run):
    run = FinishedRun.open(tiny_run)
    split = json.loads((tiny_run / "split.json").read_text())
    assert run.rows == {part: split[part] for part in ("train", "val", "test")}
    assert not set(run.rows["test"]) & (set(run.rows["train"]) | set(run.rows["val"]))
    y, p = run.classifier.predict_loader(run.loader("test", batch_size=5))
    saved = pd.read_csv(tiny_run / "predictions_test.csv").set_index("path")
    paths = run.manifest.subset(run.rows["test"]).table["path"]
    saved = saved.loc[paths]
    assert y.tolist() == [CLASSES.index(c) for c in saved["label"]]
    # same decoding, normalisation, flip and decision offsets as the test pass of training
    np.testing.assert_allclose(p, saved[[f"p_{c}" for c in CLASSES]].to_numpy(), atol=2e-5)
    # and the scores AUROC ranks: the same pass before the class offsets
    assert run.classifier.decision_offsets.any()
    _, scores = run.classifier.predict_loader(run.loader("test", batch_size=5), decide=False)
    np.testing.assert_allclose(scores, saved[[f"score_{c}" for c in CLASSES]].to_numpy(), atol=2e-5)


def test_the_other_checkpoint_opens_on_request(tiny_run):
    from skintumor.models.checkpoint import load_classifier

    best = FinishedRun.open(tiny_run, "best.ckpt")
    direct = load_classifier(tiny_run / "checkpoints" / "best.ckpt").state_dict()
    assert all(torch.equal(v, direct[k]) for k, v in best.classifier.state_dict().items())
    assert not best.classifier.decision_offsets.any()  # only the tested last.ckpt carries the chosen offsets
    with pytest.raises(DataError, match=r"epoch3\.ckpt: not a run's checkpoint"):
        FinishedRun.open(tiny_run, "epoch3.ckpt")


def test_a_run_with_a_missing_or_broken_file_names_it(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "split.json").write_text("{not json")
    with pytest.raises(DataError, match=r"split\.json: unreadable split"):
        FinishedRun.open(copy)
    (copy / "metrics_val.json").unlink()  # what a fold still training looks like
    with pytest.raises(DataError, match=r"metrics_val\.json: not found \(is .* a finished training run\?\)"):
        FinishedRun.open(copy)
    shutil.copy(tiny_run / "metrics_val.json", copy)
    (copy / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(DataError, match=r"last\.ckpt: not found \(is .* a finished training run\?\)"):
        FinishedRun.open(copy)


def test_a_broken_or_foreign_checkpoint_is_named(tiny_run, tmp_path):
    import torch

    from skintumor.models.checkpoint import load_classifier

    good = (tiny_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"truncated\.ckpt: not a readable checkpoint"):
        load_classifier(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(DataError, match=r"foreign\.ckpt: not a skintumor checkpoint"):
        load_classifier(foreign)
    with pytest.raises(DataError, match=r"nope\.ckpt: checkpoint not found"):
        load_classifier(tmp_path / "nope.ckpt")
