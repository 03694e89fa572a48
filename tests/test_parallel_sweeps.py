"""benchmarks/parallel_sweeps.py: concurrent single-fold runs laid out as Hydra sweeps."""
import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "parallel_sweeps.py"


def sweeps(out, tiny_folder, *extra):
    common = ["data=folder", f"data.root={tiny_folder}", f"data.options.patients_csv={tiny_folder}/patients.csv",
              "data.image_size=32", "data.n_folds=3", "data.batch_size=4", "trainer.max_epochs=1",
              "trainer.accelerator=cpu", "data.seed=7"]
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--jobs", "2", "--threads", "1",
                           "--folds", "0,1", "--sweep", "a", "seed=1", "--sweep", "b", "seed=2", *extra, *common],
                          cwd=REPO, capture_output=True, text=True, timeout=400)


def test_runs_every_fold_of_every_sweep_in_the_sweep_layout_and_never_overwrites(tmp_path, tiny_folder):
    out = tmp_path / "cv"
    proc = sweeps(out, tiny_folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("a", "b"):
        for k in (0, 1):
            assert (out / name / f"fold_{k}" / "metrics_val.json").is_file()
            assert (out / name / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()
    times = json.loads((out / "times.json").read_text())
    assert sorted(times["runs"]) == ["a/fold_0", "a/fold_1", "b/fold_0", "b/fold_1"]
    assert all(r["ok"] for r in times["runs"].values()) and "--sweep a seed=1" in times["command"]
    # the members share the folds and the validation split (data.seed fixed): an ensemble can be judged
    ens = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ensemble_val.py"), str(out / "a"), str(out / "b")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ens.returncode == 0, ens.stderr[-2000:]
    assert "| ensemble: offsets chosen on the mean |" in ens.stdout
    before = (out / "a" / "fold_0" / "metrics_val.json").read_bytes()
    again = sweeps(out, tiny_folder)
    assert again.returncode != 0 and "nothing is overwritten" in again.stderr
    assert (out / "a" / "fold_0" / "metrics_val.json").read_bytes() == before


def test_stop_kills_the_runs_still_going_and_reports_failure(tmp_path, tiny_folder):
    out = tmp_path / "cv"
    proc = sweeps(out, tiny_folder, "--stop", "3")
    assert proc.returncode == 1
    assert "stop after 3 s" in proc.stdout
    assert not (out / "a" / "fold_0" / "metrics_val.json").exists()
