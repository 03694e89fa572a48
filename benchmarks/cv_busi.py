"""Cross-validation on real ultrasound (BUSI: benign / malignant / normal): attention-gated vs plain
ResNet18 on the same folds, then their paired comparison.

    python -m benchmarks.cv_busi [--data ../shared/data/busi] [--size 48] [--epochs 2] [--folds 0,1,2,3,4]
                                 [--jobs 1] [--quick] [--out DIR]

For model in attention_resnet18, resnet18, one after the other (``--jobs N`` > 1: each sweep's folds
run N at a time through the Hydra joblib launcher, ``hydra/launcher=parallel``):

    python -m skintumor.train -m model=<model> data=busi data.root=DATA data.image_size=SIZE
        trainer.max_epochs=EPOCHS data.batch_size=32 model.optimizer.lr=1e-3 trainer.accelerator=cpu
        logger=csv callbacks.progress_bar=null data.fold=FOLDS sweep_name=busi_<model>
        hydra.sweep.dir=OUT/cv_busi/<model>

then ``python -m skintumor.report OUT/cv_busi/attention_resnet18 OUT/cv_busi/resnet18``. data=busi
groups near-duplicate images (BUSI has no patient ids), so folds never split them. Each sweep's
output is in OUT/cv_busi/<model>.log. ``--quick``: 32 px, 1 epoch of 3 batches, 2 folds (data.n_folds=2).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common

MODELS = ("attention_resnet18", "resnet18")
HEADLINE = ("acc", "bal_acc", "auroc_macro", "ece")


def comparison_digest(path: Path) -> dict:
    """Headline numbers of comparison.json: per level, A, B, A - B and the Holm-adjusted p."""
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    digest = {"folds": result.get("folds"), "notes": result.get("notes", [])}
    for level, entry in result.items():
        if isinstance(entry, dict) and "metrics" in entry:
            digest[level] = {
                name: {k: entry["metrics"][name].get(k) for k in ("a", "b", "diff", "p_holm")}
                for name in HEADLINE
                if name in entry["metrics"]
            }
    return digest


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("cv_busi", __doc__)
    p.add_argument("--data", type=Path, default=Path("../shared/data/busi"), help="BUSI's folder")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="a short CPU schedule: 10x the study's Adam 1e-4")
    p.add_argument("--folds", default="0,1,2,3,4")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=1, help="folds at a time within a sweep (Hydra joblib launcher)")
    run = common.begin("cv_busi", p, argv)
    args = run.args
    data = args.data.expanduser().resolve()
    if not data.is_dir():
        print(f"cv_busi: BUSI not found at {args.data} (pass --data DIR)", file=sys.stderr)
        return 1
    if args.quick:
        args.size, args.epochs, args.folds, args.n_folds = 32, 1, "0,1", 2
    out = run.work_dir.resolve()
    common_overrides = [
        "data=busi",
        f"data.root={data}",
        f"data.image_size={args.size}",
        f"trainer.max_epochs={args.epochs}",
        f"data.batch_size={args.batch}",
        f"model.optimizer.lr={args.lr}",
        f"data.n_folds={args.n_folds}",
        "trainer.accelerator=cpu",
        "logger=csv",
        "callbacks.progress_bar=null",
        f"data.fold={args.folds}",
    ]
    if args.quick:
        common_overrides.append("++trainer.limit_train_batches=3")
    if args.jobs > 1:
        common_overrides += ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.jobs}"]
    result = {
        "data": str(args.data),
        "size": args.size,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "folds": args.folds,
        "n_folds": args.n_folds,
        "jobs": args.jobs,
        "out": str(out),
        "sweeps": {},
    }
    for model in MODELS:
        status, seconds = common.run_module(
            "skintumor.train",
            ["-m", f"model={model}", *common_overrides, f"sweep_name=busi_{model}", f"hydra.sweep.dir={out / model}"],
            log=out / f"{model}.log",
        )
        result["sweeps"][model] = {
            "returncode": status,
            "seconds": seconds,
            "log": str(out / f"{model}.log"),
            "report": (out / model / "metrics_cv.json").is_file(),
        }
        common.console.print(f"{model}: exit {status}, {seconds} s wall")
        run.save(result)
    status, seconds = common.run_module(
        "skintumor.report", [out / MODELS[0], out / MODELS[1], "--out", out / "comparison"]
    )
    result["comparison"] = {
        "returncode": status,
        "seconds": seconds,
        "path": str(out / "comparison" / "comparison.json"),
        **comparison_digest(out / "comparison" / "comparison.json"),
    }
    common.console.print(f"wrote {run.save(result)}")
    ok = status == 0 and all(s["returncode"] == 0 for s in result["sweeps"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
