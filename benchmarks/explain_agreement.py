"""Agreement and faithfulness of the explanations with the lesion masks, from short trained runs.

    python -m benchmarks.explain_agreement run busi|phantom [--run-dir DIR] [OVERRIDES...]  # all steps below
    python -m benchmarks.explain_agreement busi-manifest          # outputs/busi_masks/manifest.csv
    python -m benchmarks.explain_agreement train busi|phantom RUN_DIR [OVERRIDES...]
    python -m skintumor.explain RUN_DIR --road-images 30 --overlays 24  # the maps and statistics
    python -m benchmarks.explain_agreement summarise RUN_DIR [RUN_DIR ...]  # markdown tables
    python -m benchmarks.explain_agreement --quick [--out DIR]    # all steps on a 30-image phantom, 1 epoch

``run`` prepares the data, trains fold 0 (80 px, 8 epochs, lr 1e-3 cosine, CPU), explains its test
fold and writes OUT/explain_agreement.json (OUT: ``--out``, before the command; the run directory
defaults to OUT/explain_agreement/<dataset>_fold0). The phantom is rendered at 80 px once into
outputs/phantom_80_main (= ``python -m skintumor.data.phantom --out outputs/phantom_80_main --image-size 80``)
and read through its manifest.csv, which carries the masks and findings.

BUSI has no patient ids and ships several mask files for a few images (``_mask_1``...). The manifest
joins them into one union mask per image (written under outputs/, git-ignored; the images are
symlinked, never copied). Normal images have no lesion: their mask_path stays empty.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks import common

BUSI = common.REPO.parent / "shared" / "data" / "busi"
OUT = common.REPO / "outputs"
MANIFESTS = {"busi": OUT / "busi_masks" / "manifest.csv", "phantom": OUT / "phantom_80_main" / "manifest.csv"}

# Short trainings on 2 shared CPU cores: small images, few epochs, a faster schedule than the study's.
COMMON = [
    "data.n_folds=5",
    "data.batch_size=16",
    "trainer.accelerator=cpu",
    "logger=csv",
    "model.optimizer.lr=1e-3",
    "model.scheduler.name=cosine",
]
TRAIN = ["data.image_size=80", "trainer.max_epochs=8"]
QUICK = [
    "data.n_folds=3",
    "data.batch_size=8",
    "trainer.accelerator=cpu",
    "logger=csv",
    "model.optimizer.lr=1e-3",
    "model.scheduler.name=cosine",
    "data.image_size=64",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
]


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
            rows.append(
                {
                    "path": f"{class_dir.name}/{image.name}",
                    "label": class_dir.name,
                    "patient_id": f"img:{class_dir.name}/{image.stem}",
                    "mask_path": mask_path,
                }
            )
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    common.console.print(
        f"{manifest}: {len(rows)} images, {sum(bool(r['mask_path']) for r in rows)} with a lesion mask"
    )
    return manifest


def prepare(dataset: str) -> Path:
    """The dataset's manifest.csv, written first if missing."""
    manifest = MANIFESTS[dataset]
    if not manifest.is_file():
        if dataset == "busi":
            busi_manifest()
        else:
            from skintumor.data.phantom import generate_phantom

            generate_phantom(manifest.parent, image_size=80)
    return manifest


def train(manifest: Path, run_dir: Path, overrides: Sequence[str], settings: Sequence[str] = (*TRAIN, *COMMON)) -> dict:
    """Fold 0 of ``manifest`` trained into ``run_dir`` (a subprocess); its exit status and wall time."""
    status, seconds = common.run_module(
        "skintumor.train",
        ["data=csv", f"data.options.manifest={manifest}", *settings, *overrides, f"hydra.run.dir={run_dir}"],
    )
    return {"returncode": status, "seconds": seconds}


def summarise(*run_dirs: str | Path) -> str:
    """Markdown tables from each run's explain/agreement.json."""
    parts = []
    for run_dir in map(Path, run_dirs):
        stats = json.loads((run_dir / "explain" / "agreement.json").read_text())
        parts.append(f"### {run_dir}\n\n" + (run_dir / "explain" / "agreement.md").read_text())
        parts.append(f"test metrics: {json.dumps({k: round(v, 3) for k, v in stats['test_metrics'].items()})}\n")
    text = "\n".join(parts)
    print(text)
    return text


def run_all(
    run: common.Run, manifest: Path, run_dir: Path, overrides: Sequence[str], settings: Sequence[str], explain_settings
) -> int:
    """Train, explain, summarise; the result file holds agreement.json's numbers."""
    from skintumor.explain.run import explain_run

    result = {"manifest": str(manifest), "run_dir": str(run_dir), "overrides": [*settings, *overrides]}
    result["train"] = train(manifest, run_dir, overrides, settings)
    run.save(result)
    if result["train"]["returncode"] != 0:
        common.console.print(f"training failed (exit {result['train']['returncode']}); see {run_dir}")
        return 1
    start = time.perf_counter()
    result["explain"] = explain_run(run_dir, settings=explain_settings, overwrite=True, progress=False)
    result["explain_seconds"] = round(time.perf_counter() - start, 1)
    summarise(run_dir)
    common.console.print(f"wrote {run.save(result)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("explain_agreement", __doc__)
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    c = commands.add_parser("run", help="prepare the data, train fold 0, explain it, write the result file")
    c.add_argument("dataset", choices=sorted(MANIFESTS))
    c.add_argument("--run-dir", type=Path, default=None)
    c.add_argument("--road-images", type=int, default=30)
    c.add_argument("--overlays", type=int, default=24)
    c.add_argument("overrides", nargs="*", help="Hydra overrides of the training")
    commands.add_parser("busi-manifest", help="outputs/busi_masks/manifest.csv (union masks, symlinked images)")
    c = commands.add_parser("train", help="train fold 0 of a dataset into RUN_DIR")
    c.add_argument("dataset", choices=sorted(MANIFESTS))
    c.add_argument("run_dir", type=Path)
    c.add_argument("overrides", nargs="*", help="Hydra overrides of the training")
    c = commands.add_parser("summarise", help="markdown tables of explained runs")
    c.add_argument("run_dirs", nargs="+", type=Path)
    run = common.begin("explain_agreement", p, argv)
    args = run.args
    if args.command == "busi-manifest":
        busi_manifest()
        return 0
    if args.command == "train":
        return train(prepare(args.dataset), args.run_dir.resolve(), args.overrides)["returncode"]
    if args.command == "summarise":
        summarise(*args.run_dirs)
        return 0
    from skintumor.explain.run import ExplainSettings

    if args.quick and args.command in (None, "run"):
        work = run.work_dir.resolve()
        manifest = work / "phantom" / "manifest.csv"
        common.tiny_phantom(manifest.parent, image_size=64)
        return run_all(
            run, manifest, work / "run", [], QUICK, ExplainSettings(road_images=2, road_percentiles=(50,), overlays=2)
        )
    if args.command != "run":
        p.error("choose a command (run, busi-manifest, train, summarise) or --quick")
    run_dir = (args.run_dir or run.work_dir / f"{args.dataset}_fold0").resolve()
    return run_all(
        run,
        prepare(args.dataset),
        run_dir,
        args.overrides,
        (*TRAIN, *COMMON),
        ExplainSettings(road_images=args.road_images, overlays=args.overlays),
    )


if __name__ == "__main__":
    sys.exit(main())
