"""Shared fixtures: tiny images written into temporary folders (never into the repo)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cyst", "lipoma", "pilomatricoma")


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmark scripts are not a package); one already
    imported, e.g. by another script that puts ``benchmarks/`` on ``sys.path``, is reused, not run again."""
    path = REPO / "benchmarks" / f"{name}.py"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up there
    spec.loader.exec_module(module)
    return module


def run_train(*overrides, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m skintumor.train OVERRIDES`` in a subprocess (text output captured)."""
    return subprocess.run([sys.executable, "-m", "skintumor.train", *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def train_tiny(folder: Path, run_dir: Path, *overrides) -> subprocess.CompletedProcess:
    """Two CPU epochs at 32 px on a ``write_class_folders`` folder (3 folds, batch 4, CSV logger) into run_dir."""
    return run_train("data=folder", f"data.root={folder}", f"data.options.patients_csv={folder}/patients.csv",
                     "data.image_size=32", "data.n_folds=3", "data.batch_size=4", "trainer.max_epochs=2",
                     "trainer.accelerator=cpu", "logger=csv", *overrides, f"hydra.run.dir={run_dir}")


def write_class_folders(root: Path, patients_per_class: int = 6, images_per_patient: int = 2,
                        size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """root/<class>/<patient>_<view>.png, plus patients.csv.

    Each patient has its own smooth background and a lesion whose brightness depends on the class,
    placed at random, so different patients are not near-duplicates; views of one patient are.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rows = ["path,patient_id"]
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for p in range(patients_per_class):
            fy, fx, phase = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0, 6.3)
            background = 60 + 40 * np.sin(fy * yy + phase) * np.cos(fx * xx)
            cy, cx, r = rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.3 * w, 0.7 * w), rng.uniform(5, 9)
            for v in range(images_per_patient):
                lesion = (yy - cy - v) ** 2 + (xx - cx) ** 2 < r ** 2
                img = background + rng.normal(0, 8, size) + lesion * (60 + 60 * c)
                name = f"{cls}/{cls}{p}_{v}.png"
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name)
                rows.append(f"{name},{cls}-P{p}")
    (root / "patients.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """3 classes x 6 patients x 2 views of 40x48 px."""
    return write_class_folders(tmp_path_factory.mktemp("tiny"))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with (size, mtime_ns): to assert nothing of the user's changed."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}
