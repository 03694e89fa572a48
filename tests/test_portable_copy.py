"""benchmarks/portable_copy.py: the data copy carried to a lent GPU, and its guard against committing it."""
import subprocess
import sys

import pytest

from conftest import REPO, load_benchmark, snapshot

SCRIPT = REPO / "benchmarks" / "portable_copy.py"


def copy(out, *overrides):
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--size", "32", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_copies_pixels_and_folds_exactly_and_never_overwrites(tmp_path, tiny_folder):
    data = ["data=folder", f"data.root={tiny_folder}", f"data.options.patients_csv={tiny_folder}/patients.csv",
            "data.n_folds=3"]
    before = snapshot(tiny_folder)
    proc = copy(tmp_path / "carry", *data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "identical pixels and masks: True; identical folds (all 3): True" in proc.stdout
    assert len(list((tmp_path / "carry" / "images").glob("*.png"))) == 36
    assert snapshot(tiny_folder) == before
    written = snapshot(tmp_path / "carry")
    again = copy(tmp_path / "carry", *data)
    assert again.returncode != 0 and "nothing is overwritten" in again.stderr
    assert snapshot(tmp_path / "carry") == written


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout: nothing could be committed")
def test_refuses_a_folder_in_the_repository_that_git_would_track():
    out = REPO / "carry_that_git_would_track"
    proc = copy(out, "data=busi")
    assert proc.returncode != 0 and "not ignored by git" in proc.stderr
    assert not out.exists()
    portable_copy = load_benchmark("portable_copy")
    assert portable_copy.unignored_in_repo(out)
    assert not any(portable_copy.unignored_in_repo(REPO / name) for name in (".busi_carry", ".phantom_carry"))  # the documented ones
