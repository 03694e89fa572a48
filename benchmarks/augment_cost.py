"""Augmentation-policy search cost vs final-training cost for one outer fold, from measured CPU seconds.

    python -m benchmarks.augment_cost [--manifest CSV] [--size 128] [--fold 0] [--epochs 30] [--quick] [--out DIR]

Measures, in one process on the same images: the CPU time of one training epoch of the study's
network (plain Adam loop, batch 32: the same forward/backward work as a Lightning epoch without its
overhead, so training comes out *cheaper* than it is) and of one real inner fold of the search with
the default settings (child training + all TPE trials, pruning included). Then

    search   = n_inner x (child + trials of one inner fold)
    training = epochs x (epoch(train) + scoring(val))

Without ``--manifest`` it uses the default phantom (generated once into outputs/phantom). Run it with
OMP_NUM_THREADS=1 (and the default ``--threads 1``) so CPU time is not inflated by thread spinning.
``--quick``: a 30-image phantom at 32 px, 2 inner folds (one measured) of 4 trials, 1 child epoch.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
import torch

from benchmarks import common
from skintumor.augment.search import SearchSettings, normalise, sample_scores, search_inner_fold, train_child
from skintumor.data.datamodule import decode_resized
from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.manifest import Manifest
from skintumor.data.phantom import phantom_manifest
from skintumor.models.module import SkinTumorClassifier


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(manifest: Manifest, size: int, fold: int, epochs: int, settings: SearchSettings) -> dict:
    folds = PatientGroupedFolds(manifest.labels, manifest.groups, 5, 0.2, 42)
    split = folds.split(fold)
    inner_train, inner_val = folds.inner_folds(fold, settings.n_inner)[0]
    part = folds.train_part(fold)
    images = dict(zip(part.tolist(), decode_resized(manifest.subset(part), size, with_masks=False)[0]))
    labels = np.asarray(manifest.labels)
    torch.manual_seed(0)
    module = SkinTumorClassifier(manifest.classes, class_counts=np.bincount(labels[part]).tolist(), image_size=size)

    def tensors(rows):
        return normalise([images[i] for i in rows], settings.mean, settings.std), torch.as_tensor(labels[rows])

    def epoch(rows):
        x, y = tensors(rows)
        return cpu(lambda: train_child(module, module.criterion, x, y, 1, 1e-4, 32, 0))

    def scoring(rows):
        x, y = tensors(rows)
        return cpu(lambda: sample_scores(module, x, y, settings.eval_batch_size))

    epoch(split.train[:64])  # warm-up (oneDNN kernels)
    train_epoch, val_scoring = epoch(split.train), scoring(split.val)

    # one real inner fold of the search (pruning included)
    torch.manual_seed(1)
    child = SkinTumorClassifier(
        manifest.classes, class_counts=np.bincount(labels[inner_train]).tolist(), image_size=size
    )
    x, y = tensors(inner_train)
    child_cpu = cpu(
        lambda: train_child(
            child, child.criterion, x, y, settings.child_epochs, settings.child_lr, settings.batch_size, 0
        )
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = []
    trials_cpu = cpu(
        lambda: studies.append(
            search_inner_fold(child, [images[i] for i in inner_val], labels[inner_val], settings, "cost-probe", 0)
        )
    )
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in studies[0].trials)
    search = settings.n_inner * (child_cpu + trials_cpu)
    training = epochs * (train_epoch + val_scoring)
    return {
        "image_size": size,
        "fold": fold,
        "images": len(manifest),
        "train_images": len(split.train),
        "val_images": len(split.val),
        "inner_folds": settings.n_inner,
        "inner_train_images": len(inner_train),
        "inner_val_images": len(inner_val),
        "cpu_s_train_epoch": round(train_epoch, 2),
        "cpu_s_val_scoring": round(val_scoring, 2),
        "child_epochs": settings.child_epochs,
        "cpu_s_child": round(child_cpu, 2),
        "trials": settings.trials,
        "pruned": int(pruned),
        "cpu_s_trials": round(trials_cpu, 2),
        "search_cpu_s": round(search, 1),
        "training_epochs": epochs,
        "training_cpu_s": round(training, 1),
        "search_over_training": round(search / training, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("augment_cost", __doc__)
    p.add_argument("--manifest", help="manifest.csv of the data (default: the default phantom)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30, help="final training epochs (study: 30)")
    p.add_argument("--threads", type=int, default=1, help="1: CPU time is not inflated by thread spinning")
    run = common.begin("augment_cost", p, argv)
    args = run.args
    settings = SearchSettings()  # the study's protocol
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.quick:
                manifest = common.tiny_phantom(Path(tmp) / "phantom")
                args.size, args.epochs = 32, 2
                settings = dataclasses.replace(settings, n_inner=2, trials=4, top_n=2, child_epochs=1, eval_chunks=2)
            elif args.manifest:
                manifest = Manifest.from_csv(args.manifest)
            else:
                manifest = phantom_manifest("outputs/phantom", progress=False)
            result = {"data": "tiny phantom" if args.quick else (args.manifest or "default phantom")}
            result |= measure(manifest, args.size, args.fold, args.epochs, settings)
        common.console.print(result)
        common.console.print(f"wrote {run.save(result)}")  # machine's torch_threads: the measured --threads
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test) keeps its own
    return 0


if __name__ == "__main__":
    sys.exit(main())
