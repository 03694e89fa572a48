"""The shipped experiments give the results they gave before the code was pruned.

``tests/golden/<experiment>.csv`` are the test-fold predictions of a tiny fixed-seed run of each
experiment (:func:`conftest.tiny_overrides`), written by the code before the rejected recipe options
were removed (commit b1ca081). A change that moves them is a change of the science, not a clean-up.
The tolerance (1e-4) absorbs float differences between CPU kinds; any real change moves
probabilities by far more. The goldens were written with torch's default thread count: a run with
another (e.g. ``OMP_NUM_THREADS=1``) sums in another order and, after two epochs, can flip a prediction.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_train, tiny_overrides

GOLDEN = Path(__file__).parent / "golden"


def assert_same_predictions(run_dir: Path, experiment: str) -> None:
    got = pd.read_csv(run_dir / "predictions_test.csv")
    want = pd.read_csv(GOLDEN / f"{experiment}.csv")
    assert list(got.columns) == list(want.columns)
    assert got["path"].tolist() == want["path"].tolist() and got["pred"].tolist() == want["pred"].tolist()
    numbers = [c for c in want.columns if c.startswith(("p_", "score_"))]
    np.testing.assert_allclose(got[numbers].to_numpy(), want[numbers].to_numpy(), atol=1e-4)


def test_recipe_is_unchanged(tiny_run):
    assert_same_predictions(tiny_run, "recipe")


@pytest.mark.slow
@pytest.mark.parametrize("experiment, extra", [("paper", []), ("recipe_ensemble", ["seed=1"])])
def test_paper_and_an_ensemble_member_are_unchanged(masked_manifest, tmp_path, experiment, extra):
    proc = run_train(*tiny_overrides(masked_manifest, experiment), *extra, f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_predictions(tmp_path / "r", experiment)
