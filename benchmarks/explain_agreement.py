"""Agreement and faithfulness numbers for benchmarks/RESULTS.md, from short trained runs.

    python benchmarks/explain_agreement.py busi-manifest            # outputs/busi_masks/manifest.csv
    python benchmarks/explain_agreement.py train busi RUN_DIR [overrides...]
    python -m skintumor.data.phantom --out outputs/phantom_80_main --image-size 80
    python benchmarks/explain_agreement.py train phantom RUN_DIR [overrides...]
    python -m skintumor.explain RUN_DIR                              # the maps and statistics
    python benchmarks/explain_agreement.py summarise RUN_DIR [RUN_DIR ...]   # markdown tables

BUSI has no patient ids and ships several mask files for a few images (``_mask_1``...). The manifest
joins them into one union mask per image (written under outputs/, git-ignored; the images are
symlinked, never copied). Normal images have no lesion: their mask_path stays empty.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "busi"
OUT = REPO / "outputs"

# Short trainings on 2 shared CPU cores: small images, few epochs, a faster schedule than the study's.
COMMON = ["data.n_folds=5", "data.batch_size=16", "trainer.accelerator=cpu", "logger=csv",
          "model.optimizer.lr=1e-3", "model.scheduler.name=cosine"]
TRAIN = {
    "busi": ["data=csv", f"data.options.manifest={OUT / 'busi_masks' / 'manifest.csv'}",
             "data.image_size=80", "trainer.max_epochs=8"],
    # the phantom rendered at 80 px once (python -m skintumor.data.phantom --out outputs/phantom_80_main
    # --image-size 80), read through its manifest.csv, which carries the masks and findings
    "phantom": ["data=csv", f"data.options.manifest={OUT / 'phantom_80_main' / 'manifest.csv'}",
                "data.image_size=80", "trainer.max_epochs=8"],
}


def busi_manifest(busi: Path = BUSI, out: Path = OUT / "busi_masks") -> Path:
    """Symlinked images + union masks + manifest.csv (path, label, patient_id, mask_path) under ``out``."""
    if not busi.is_dir():
        raise SystemExit(f"{busi}: BUSI not found")
    rows = []
    for class_dir in sorted(d for d in busi.iterdir() if d.is_dir()):
        (out / class_dir.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.glob("*.png")):
            if "_mask" in image.stem:
                continue
            link = out / class_dir.name / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
            masks = sorted(class_dir.glob(f"{image.stem}_mask*.png"))
            union = np.zeros(0)
            for m in masks:
                arr = np.asarray(Image.open(m).convert("L")) > 0
                union = arr if union.size == 0 else union | arr
            mask_path = ""
            if union.size and union.any():
                mask_path = f"{class_dir.name}/{image.stem}_union_mask.png"
                Image.fromarray(union.astype(np.uint8) * 255).save(out / mask_path)
            rows.append({"path": f"{class_dir.name}/{image.name}", "label": class_dir.name,
                         "patient_id": f"img:{class_dir.name}/{image.stem}", "mask_path": mask_path})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    print(f"{manifest}: {len(rows)} images, {sum(bool(r['mask_path']) for r in rows)} with a lesion mask")
    return manifest


def train(dataset: str, run_dir: str, *overrides: str) -> None:
    if dataset == "busi" and not (OUT / "busi_masks" / "manifest.csv").is_file():
        busi_manifest()
    command = [sys.executable, "-m", "skintumor.train", *TRAIN[dataset], *COMMON, *overrides,
               f"hydra.run.dir={run_dir}"]
    print(" ".join(command[1:]))
    subprocess.run(command, cwd=REPO, check=True)


def summarise(*run_dirs: str) -> str:
    """Markdown tables from each run's explain/agreement.json."""
    parts = []
    for run_dir in map(Path, run_dirs):
        stats = json.loads((run_dir / "explain" / "agreement.json").read_text())
        parts.append(f"### {run_dir}\n\n" + (run_dir / "explain" / "agreement.md").read_text())
        parts.append(f"test metrics: {json.dumps({k: round(v, 3) for k, v in stats['test_metrics'].items()})}\n")
    text = "\n".join(parts)
    print(text)
    return text


if __name__ == "__main__":
    commands = {"busi-manifest": busi_manifest, "train": train, "summarise": summarise}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
