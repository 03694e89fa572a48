"""Speed of explaining a test fold, against the cost of the model itself, on CPU.

    python -m benchmarks.explain_speed [--images 140] [--size 128] [--road-images 8] [--threads N]
                                       [--quick] [--out DIR]

One random-initialised, seeded recipe network (attention-gated ResNet18 with the lesion decoder,
hflip TTA, balanced decision with non-zero class offsets: speed does not depend on the weights) is
written as a finished run (``checkpoints/last.ckpt``, ``manifest.csv``, ``split.json`` with every
image in the test fold, ``metrics_val.json``) over ``--images`` synthetic speckle scans of ``--size``
px, three classes, each with an elliptic lesion and its mask. Measured once each, in this order:

  baseline   one forward + backward pass of the network over the fold, batches of 16 (explain's batch)
  maps       ``explain_batch`` of every map over the fold, batches of 16 (the maps alone)
  explain    ``explain_run`` without ROAD: predictions, maps, overlays, galleries, statistics; one
             ``explain_run`` with ROAD on ``--road-images`` images, minus the seconds it spent in ROAD
  road       ROAD's seconds per image (every map) in that run

Targets (booleans in the result): explain without ROAD <= 2 x the maps; the maps <= 8 x the baseline
pass. ``road_images_for_maps_time`` = maps / ROAD per image: the ROAD images that add the maps'
time again, which is how the default ``--road-images`` of ``python -m skintumor.explain`` was chosen
(``skintumor.explain.run.ROAD_IMAGES``; measured at 140 images, 128 px, one thread).
``--threads``: torch's threads, also ROAD's solver threads (default: torch's own; restored after).
``--quick``: 12 images at 32 px, ROAD on 2 images, one thread (not a measurement: a pass through the code).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks import common
from skintumor.explain.cam import METHODS, explain_batch
from skintumor.explain.run import ROAD_IMAGES, ExplainSettings, explain_run
from skintumor.models.module import SkinTumorClassifier

CLASSES = common.CLASSES
BATCH = ExplainSettings().batch_size
MAPS_TARGET, EXPLAIN_TARGET = 8.0, 2.0  # maps <= 8 x baseline pass; explain without ROAD <= 2 x maps


def synthetic_fold(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` speckle scans with an elliptic lesion (brightness and depth by class) and its mask under
    ``root``; returns root/manifest.csv (path, label, patient_id, mask_path)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(n):
        c = i % len(CLASSES)
        cy, cx = rng.uniform(0.35, 0.6), rng.uniform(0.3, 0.7)
        ry, rx = rng.uniform(0.08, 0.16), rng.uniform(0.12, 0.25)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img = 70 + 25 * np.sin(9 * yy + rng.uniform(0, 6)) + rng.gamma(2.0, 12.0, (size, size))
        img[mask] = img[mask] * (0.3 + 0.5 * c) + 20
        name = f"{CLASSES[c]}_{i:04d}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"{name}_mask.png")
        rows.append({"path": f"{name}.png", "label": CLASSES[c], "patient_id": name, "mask_path": f"{name}_mask.png"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).sort_values("label", kind="stable").to_csv(manifest, index=False)
    return manifest


def finished_run(run_dir: Path, manifest: Path, classifier: SkinTumorClassifier) -> Path:
    """A run directory as training leaves it, every manifest row in the test fold."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    hp = json.loads(json.dumps(dict(classifier.hparams)))  # plain data: read back with weights_only
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": hp}, run_dir / "checkpoints" / "last.ckpt")
    table = pd.read_csv(manifest)
    table.to_csv(run_dir / "manifest.csv", index=False)
    split = {"train": [], "val": [], "test": list(range(len(table))), "root": str(manifest.parent.resolve())}
    (run_dir / "split.json").write_text(json.dumps(split | {"classes": CLASSES}))
    (run_dir / "metrics_val.json").write_text(json.dumps({"checkpoint": "checkpoints/last.ckpt"}))
    return run_dir


def fold_batches(manifest: Path, classifier: SkinTumorClassifier) -> list[torch.Tensor]:
    """The fold's images, normalised as explain feeds them, in batches of :data:`BATCH`."""
    table = pd.read_csv(manifest)
    hp = classifier.hparams
    images = np.stack([np.asarray(Image.open(manifest.parent / p).convert("L")) for p in table["path"]])
    x = ((torch.from_numpy(images).float().div(255.0) - float(hp.mean)) / float(hp.std))[:, None]
    return list(torch.split(x, BATCH))


def baseline_pass(classifier: SkinTumorClassifier, batches: list[torch.Tensor]) -> float:
    """Seconds of one forward + backward pass over the batches (cross-entropy on class 0)."""
    start = time.perf_counter()
    for x in batches:
        logits = classifier(x)
        torch.nn.functional.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long)).backward()
    classifier.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def maps_pass(classifier: SkinTumorClassifier, batches: list[torch.Tensor]) -> float:
    """Seconds of ``explain_batch`` (every map) over the batches, targets as explain's (predicted)."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for x in batches:
        explain_batch(classifier, x, [int(t) for t in torch.arange(len(x)) % len(CLASSES)], METHODS, "layer4", rng)
    return time.perf_counter() - start


def measure(work: Path, images: int, size: int, road_images: int) -> dict:
    manifest = synthetic_fold(work / "images", images, size)
    classifier = common.recipe_classifier(size)
    run_dir = finished_run(work / "run", manifest, classifier)
    batches = fold_batches(manifest, classifier)
    baseline_pass(classifier, batches[:1])  # warm-up: the first pass builds the kernels
    baseline = baseline_pass(classifier, batches)
    common.console.print(f"baseline forward+backward: {baseline:.2f} s")
    maps = maps_pass(classifier, batches)
    common.console.print(f"maps: {maps:.2f} s")
    settings = ExplainSettings(road_images=road_images)
    start = time.perf_counter()
    result = explain_run(run_dir, settings=settings, overwrite=True, progress=False)
    total = time.perf_counter() - start
    road = float(result["settings"]["road_seconds"])
    per_image = result["settings"]["road_seconds_per_image"]
    explain = total - road
    common.console.print(f"explain without ROAD: {explain:.2f} s; ROAD: {road:.2f} s ({per_image} s per image)")
    return {
        "images": images,
        "size": size,
        "maps_computed": [m for m in result["settings"]["methods"]],
        "road_images": result["settings"]["road_images"],
        "road_percentiles": result["settings"]["road_percentiles"],
        "seconds": {
            "baseline": round(baseline, 3),
            "maps": round(maps, 3),
            "explain_without_road": round(explain, 3),
            "road": round(road, 3),
            "explain_total": round(total, 3),
        },
        "explain_breakdown": result["seconds"],
        "road_seconds_per_image": per_image,
        "ratios": {"maps_over_baseline": round(maps / baseline, 2), "explain_over_maps": round(explain / maps, 2)},
        "targets": {
            "explain_le_2x_maps": bool(explain <= EXPLAIN_TARGET * maps),
            "maps_le_8x_baseline": bool(maps <= MAPS_TARGET * baseline),
        },
        "road_images_for_maps_time": int(maps // per_image) if per_image else None,
        "road_images_default": ROAD_IMAGES,
        "road_default_over_maps": round(ROAD_IMAGES * per_image / maps, 2) if per_image else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("explain_speed", __doc__)
    p.add_argument("--images", type=int, default=140, help="test images in the fold (default 140)")
    p.add_argument("--size", type=int, default=128, help="image side in px (default 128, the recipe's)")
    p.add_argument("--road-images", type=int, default=8, help="ROAD on this many images (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; --quick: 1)")
    run = common.begin("explain_speed", p, argv)
    args = run.args
    images, size, road_images = (12, 32, 2) if args.quick else (args.images, args.size, args.road_images)
    threads = 1 if args.quick and args.threads is None else args.threads
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        result = measure(run.work_dir.resolve(), images, size, road_images) | {"threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(before)
    common.console.print(
        f"maps / baseline = {result['ratios']['maps_over_baseline']} (target <= {MAPS_TARGET:g}), explain without "
        f"ROAD / maps = {result['ratios']['explain_over_maps']} (target <= {EXPLAIN_TARGET:g}); ROAD images for the "
        f"maps' time: {result['road_images_for_maps_time']} (default {ROAD_IMAGES})"
    )
    common.console.print(f"wrote {run.save(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
