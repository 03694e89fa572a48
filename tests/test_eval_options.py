"""benchmarks/eval_options.py: options scored without retraining must start from what the recipe does."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import load_benchmark, train_tiny
from skintumor.evaluate.finished_run import FinishedRun

eval_options = load_benchmark("eval_options")


def test_zoom_and_shift_move_the_content_as_named():
    x = torch.zeros(1, 1, 50, 50)
    x[..., 20:30, 20:30] = 1.0  # a centred square
    assert torch.allclose(eval_options.zoom_shift(x), x, atol=1e-6)
    shifted = eval_options.zoom_shift(x, shift=0.06)  # 6 % of 50 px = 3 px
    assert torch.argmax(shifted[0, 0, 25]).item() in (17, 23)
    assert shifted[0, 0, 25].sum().item() == pytest.approx(10, abs=0.5)
    assert eval_options.zoom_shift(x, 1.1).sum() > x.sum() > eval_options.zoom_shift(x, 0.9).sum()
    assert all(v in eval_options.VIEWS or v in eval_options.TOGGLED for views in eval_options.VIEW_SETS.values()
               for v in views)


def test_decoder_evidence_raises_normal_where_no_lesion_is_seen():
    probs = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    lesion_max = np.array([0.05, 0.5, 0.95])
    out = eval_options.with_decoder_evidence(probs, lesion_max, 1.0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert out[0, 2] > 0.2 and out[2, 2] < 0.2
    np.testing.assert_allclose(out[1], probs[1])  # q = 0.5: no evidence either way
    np.testing.assert_allclose(out[0, :2] / out[0, :2].sum(), [0.5 / 0.8, 0.3 / 0.8])  # the others keep their ratio
    np.testing.assert_allclose(eval_options.with_decoder_evidence(probs, lesion_max, 0.0), probs)


def decoder_sweep(tiny_folder, sweep, *overrides):
    """A one-fold 'sweep' (sweep/fold_0) of a tiny run with the lesion decoder and the recipe's flip."""
    proc = train_tiny(tiny_folder, sweep / "fold_0", "model.net.lesion_decoder=true", "model.tta=hflip", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.fixture(scope="module")
def tiny_sweep(tiny_folder, tmp_path_factory):
    return decoder_sweep(tiny_folder, tmp_path_factory.mktemp("eval_options") / "a")


def test_the_hflip_view_set_is_the_recipes_own_scoring(tiny_sweep):
    run = FinishedRun.open(tiny_sweep / "fold_0")
    y, views, lesion_max = eval_options.score_views(run, "val")
    assert set(views) == set(eval_options.VIEWS) | set(eval_options.TOGGLED) and lesion_max.shape == y.shape
    assert ((lesion_max >= 0) & (lesion_max <= 1)).all()
    recipe = eval_options.options(views, lesion_max)["views: hflip (the recipe)"]
    y_run, scores = run.classifier.predict_loader(run.loader("val"), decide=False)
    np.testing.assert_array_equal(y, y_run)
    np.testing.assert_allclose(recipe, scores, atol=2e-5)
    assert not np.allclose(views["zoom 1.1"], views["as is"])  # the other views do differ
    assert not np.allclose(views["lesion zoom toggled"], views["as is"])  # a second look at test time
    assert run.classifier.eval_model().lesion_zoom == 0  # ... that leaves the network as trained


def test_zoom_toggled_switches_the_zoom_either_way_and_restores_it():
    net = torch.nn.Module()
    for trained, during in ((0, 64), (96, 0)):
        net.lesion_zoom = trained
        with eval_options.zoom_toggled(net, 64):
            assert net.lesion_zoom == during
        assert net.lesion_zoom == trained
    with pytest.raises(RuntimeError), eval_options.zoom_toggled(net, 64):
        raise RuntimeError("an error inside")
    assert net.lesion_zoom == 96


def test_members_must_share_their_folds(tiny_sweep, tmp_path, monkeypatch, capsys):
    """The members' ensemble is scored on validation images, so they must all have the same ones."""
    twin = tmp_path / "a_again"  # the same run under a second name: a member pair that shares its folds
    twin.symlink_to(tiny_sweep, target_is_directory=True)
    monkeypatch.setattr(sys, "argv", ["eval_options.py", str(tiny_sweep), str(twin)])
    assert eval_options.main() == 0
    table = capsys.readouterr().out
    assert "| ensemble | views: hflip (the recipe) |" in table and table.count("\n") == 2 + 3 * 12
    other = tmp_path / "b"  # the same run with one validation image swapped for a training one: other folds
    shutil.copytree(tiny_sweep, other)
    split = json.loads((other / "fold_0" / "split.json").read_text())
    split["val"], split["train"] = split["val"][1:] + split["train"][:1], split["train"][1:] + split["val"][:1]
    (other / "fold_0" / "split.json").write_text(json.dumps(split))
    monkeypatch.setattr(sys, "argv", ["eval_options.py", str(tiny_sweep), str(other)])
    with pytest.raises(SystemExit, match="rows differ"):
        eval_options.main()


def test_ensemble_val_averages_both_checkpoints_of_a_member(tiny_sweep, monkeypatch, capsys):
    ensemble_val = load_benchmark("ensemble_val")  # the module eval_options imported, not a second copy
    assert ensemble_val.scored is eval_options.scored

    assert ensemble_val.member(f"{tiny_sweep}@last.ckpt", "best.ckpt") == (tiny_sweep, "last.ckpt", "a (last.ckpt)")
    assert ensemble_val.member(str(tiny_sweep), "last.ckpt")[1] == "last.ckpt"
    with pytest.raises(SystemExit, match="must be best.ckpt or last.ckpt"):
        ensemble_val.member(f"{tiny_sweep}@epoch3.ckpt", "best.ckpt")
    monkeypatch.setattr(sys, "argv", ["ensemble_val.py", str(tiny_sweep), f"{tiny_sweep}@last.ckpt"])
    assert ensemble_val.main() == 0
    table = capsys.readouterr().out.splitlines()[2:]
    rows = [line.split(" | ")[0] for line in table]
    assert rows[:2] == ["| a", "| a (last.ckpt)"] and len(rows) == 4
    # one sweep alone: its own row only, scored exactly as it was beside the other member
    monkeypatch.setattr(sys, "argv", ["ensemble_val.py", f"{tiny_sweep}@last.ckpt"])
    assert ensemble_val.main() == 0
    assert capsys.readouterr().out.splitlines()[2:] == [table[1]]
