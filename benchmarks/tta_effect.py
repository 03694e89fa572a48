"""Test-time flip on vs off for the selected checkpoints of a cross-validation sweep (no retraining).

    python benchmarks/tta_effect.py outputs/cv/recipe_busi_cpu_<time>

For each fold, the run's own data config rebuilds its split; the checkpoint scores its validation
and test parts with ``tta`` = hflip and = none. The validation score (what would choose) and the
pooled test metrics are printed as a markdown table. The checkpoints were chosen with the run's own
``tta`` setting, so the other setting is evaluated at the same epoch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skintumor.data.datamodule import UltrasoundDataModule  # noqa: E402
from skintumor.evaluate.metrics import classification_metrics  # noqa: E402
from skintumor.models.module import load_classifier  # noqa: E402


@torch.no_grad()
def probabilities(model, loader) -> tuple[np.ndarray, np.ndarray]:
    ys, ps = [], []
    for x, y, *_ in loader:
        x = x.contiguous(memory_format=torch.channels_last)
        ps.append(model.predict_proba(x).numpy())
        ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(ps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    results = {tta: {"val": [], "test_y": [], "test_p": []} for tta in (None, "hflip")}
    classes = None
    for fold_dir in sorted(args.sweep.glob("fold_*")):
        overrides = OmegaConf.load(fold_dir / ".hydra" / "overrides.yaml")
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[o for o in overrides if not o.startswith(("hydra.", "sweep_name"))])
        data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "_target_"}
        data["root"] = str((REPO / data["root"]).resolve()) if data.get("root") else None
        datamodule = UltrasoundDataModule(**data)
        datamodule.setup()
        model = load_classifier(fold_dir / "checkpoints" / "best.ckpt").eval()
        classes = model.hparams.classes
        for tta in results:
            model.hparams.tta = tta
            y, p = probabilities(model, datamodule.val_dataloader())
            m = classification_metrics(y, p, classes)
            results[tta]["val"].append((m["auroc_macro"] + m["bal_acc"]) / 2)
            y, p = probabilities(model, datamodule.test_dataloader())
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
