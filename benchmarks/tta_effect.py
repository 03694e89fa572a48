"""Test-time flip on vs off for the selected checkpoints of a cross-validation sweep (no retraining).

    python benchmarks/tta_effect.py outputs/cv/recipe_busi_cpu_<time>

For each fold, the run directory's own ``manifest.csv`` and ``split.json`` give its validation and
test rows (no config is re-composed, no data check re-run); the checkpoint scores them with ``tta`` =
hflip and = none. The validation score (what would choose) and the pooled test metrics are printed
as a markdown table. The checkpoints were chosen with the run's own ``tta`` setting, so the other
setting is evaluated at the same epoch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skintumor.data.datamodule import CachedImageDataset  # noqa: E402
from skintumor.data.manifest import Manifest  # noqa: E402
from skintumor.explain.run import decode_test_images  # noqa: E402
from skintumor.evaluate.metrics import classification_metrics  # noqa: E402
from skintumor.models.module import load_classifier  # noqa: E402


def fold_model_and_loaders(fold_dir: Path) -> tuple[torch.nn.Module, dict[str, DataLoader]]:
    """A finished run's chosen checkpoint (eval mode) and loaders of its ``val`` and ``test`` rows."""
    split = json.loads((fold_dir / "split.json").read_text())
    manifest = Manifest.from_csv(fold_dir / "manifest.csv", root=split["root"], classes=split["classes"])
    model = load_classifier(fold_dir / "checkpoints" / "best.ckpt").eval()
    hp, labels, loaders = model.hparams, manifest.labels, {}
    for part in ("val", "test"):
        rows = list(split[part])
        images, _ = decode_test_images(fold_dir, manifest.subset(rows), hp.image_size)  # as training decoded them
        dataset = CachedImageDataset(images, [labels[r] for r in rows], np.arange(len(rows)), hp.mean, hp.std)
        loaders[part] = DataLoader(dataset, batch_size=64)
    return model, loaders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    results = {tta: {"val": [], "test_y": [], "test_p": []} for tta in (None, "hflip")}
    classes = None
    for fold_dir in sorted(args.sweep.glob("fold_*")):
        model, loaders = fold_model_and_loaders(fold_dir)
        classes = model.hparams.classes
        for tta in results:
            model.hparams.tta = tta
            y, p = model.predict_loader(loaders["val"])
            m = classification_metrics(y, p, classes)
            results[tta]["val"].append((m["auroc_macro"] + m["bal_acc"]) / 2)
            y, p = model.predict_loader(loaders["test"])
            results[tta]["test_y"].append(y)
            results[tta]["test_p"].append(p)
        print(f"{fold_dir.name} done", file=sys.stderr)
    print("| test-time flip | val score (mean over folds) | pooled test AUROC | pooled test bal. acc |")
    print("|---|---|---|---|")
    for tta, r in results.items():
        m = classification_metrics(np.concatenate(r["test_y"]), np.concatenate(r["test_p"]), classes)
        print(f"| {tta or 'none'} | {np.mean(r['val']):.3f} | {m['auroc_macro']:.3f} | {m['bal_acc']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
