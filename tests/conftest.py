"""Shared fixtures: tiny images written into temporary folders (never into the repo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning  # noqa: F401 - imported before any test captures stderr: its log handler keeps the real one
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cyst", "lipoma", "pilomatricoma")


def run_train(*overrides, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m skintumor.train OVERRIDES`` in a subprocess (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "skintumor.train", *overrides], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def train_tiny(folder: Path, run_dir: Path, *overrides) -> subprocess.CompletedProcess:
    """Two CPU epochs at 32 px on a ``write_class_folders`` folder (3 folds, batch 4, CSV logger) into run_dir."""
    return run_train(
        "data=folder",
        f"data.root={folder}",
        f"data.options.patients_csv={folder}/patients.csv",
        "data.image_size=32",
        "data.n_folds=3",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "logger=csv",
        *overrides,
        f"hydra.run.dir={run_dir}",
    )


def write_class_folders(
    root: Path,
    patients_per_class: int = 6,
    images_per_patient: int = 2,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> Path:
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
                lesion = (yy - cy - v) ** 2 + (xx - cx) ** 2 < r**2
                img = background + rng.normal(0, 8, size) + lesion * (60 + 60 * c)
                name = f"{cls}/{cls}{p}_{v}.png"
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name)
                rows.append(f"{name},{cls}-P{p}")
    (root / "patients.csv").write_text("\n".join(rows) + "\n")
    return root


def write_masked_manifest(
    root: Path, patients_per_class: int = 6, images_per_patient: int = 2, size: int = 40, seed: int = 0
) -> Path:
    """root/<class><p>_<v>.png with a lesion mask each and a ``calcification`` finding column, and
    root/manifest.csv (path, label, patient_id, mask_path, calcification). The lesion's place and
    brightness depend on the class, so a tiny network learns something in two epochs."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, cls in enumerate(CLASSES):
        for p in range(patients_per_class):
            for v in range(images_per_patient):
                img = rng.integers(0, 60, (size, size), dtype=np.uint8)
                mask = np.zeros((size, size), np.uint8)
                top, left = 8 + 2 * v, 6 + 8 * c
                mask[top : top + 12, left : left + 14] = 255
                img[mask > 0] += 120 + 30 * c
                Image.fromarray(img).save(root / f"{cls}{p}_{v}.png")
                Image.fromarray(mask).save(root / f"{cls}{p}_{v}_mask.png")
                rows.append(f"{cls}{p}_{v}.png,{cls},{cls}-{p},{cls}{p}_{v}_mask.png,{int(rng.random() < 0.5)}")
    (root / "manifest.csv").write_text("path,label,patient_id,mask_path,calcification\n" + "\n".join(rows) + "\n")
    return root / "manifest.csv"


def tiny_overrides(manifest: Path, experiment: str = "recipe") -> list[str]:
    """A 2-epoch CPU run at 32 px of ``experiment`` on a :func:`write_masked_manifest` set (3 folds, CSV logger)."""
    return [
        f"experiment={experiment}",
        "data=csv",
        f"data.options.manifest={manifest}",
        "data.image_size=32",
        "data.n_folds=3",
        "data.batch_size=8",
        "data.dedup=false",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "logger=csv",
        "callbacks.progress_bar=null",
    ]


@pytest.fixture(scope="session")
def masked_manifest(tmp_path_factory) -> Path:
    """A :func:`write_masked_manifest` set: 3 classes x 6 patients x 2 views of 40 px, with masks."""
    return write_masked_manifest(tmp_path_factory.mktemp("masked"))


@pytest.fixture(scope="session")
def tiny_run(masked_manifest, tmp_path_factory) -> Path:
    """The suite's one shared trained run: ``experiment=recipe`` (lesion decoder, gate mask loss,
    balanced sampler, hflip TTA, class offsets, final epoch tested) through the command line, two
    epochs at 32 px. Read it, never write into it: a test that changes files copies it first."""
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    proc = run_train(*tiny_overrides(masked_manifest), f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """3 classes x 6 patients x 2 views of 40x48 px."""
    return write_class_folders(tmp_path_factory.mktemp("tiny"))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with (size, mtime_ns): to assert nothing of the user's changed."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def requires_gpus(n: int = 1):
    """Mark a test that needs ``n`` CUDA devices: it skips cleanly, with the reason, where there are fewer
    (lightning-hydra-template's ``RunIf(min_gpus=n)``)."""
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0

    def mark(test):
        return pytest.mark.gpu(pytest.mark.skipif(found < n, reason=f"needs {n} CUDA device(s), found {found}")(test))

    return mark
