"""Shared fixtures: tiny images written into temporary folders (never into the repo)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cyst", "lipoma", "pilomatricoma")


def write_class_folders(root: Path, patients_per_class: int = 6, images_per_patient: int = 2,
                        size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """root/<class>/<patient>_<view>.png with a class-dependent bright blob, plus patients.csv."""
    rng = np.random.default_rng(seed)
    rows = ["path,patient_id"]
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for p in range(patients_per_class):
            for v in range(images_per_patient):
                img = rng.integers(0, 60, size, dtype=np.uint8)
                img[8:24, 6 + 12 * c:18 + 12 * c] += 150
                name = f"{cls}/{cls}{p}_{v}.png"
                Image.fromarray(img).save(root / name)
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
