"""Search cost vs final-training cost for one outer fold, from measured unit costs (CPU seconds).

Measures, in one process on the same images: the CPU time of one training epoch of the study's
network (plain Adam loop, batch 32: the same forward/backward work as a Lightning epoch without its
overhead, so training comes out *cheaper* than it is) and of one real inner fold of the search with
the default settings (child training + all TPE trials, pruning included). Then

    search   = n_inner x (child + trials of one inner fold)
    training = epochs x (epoch(train) + scoring(val))

    python benchmarks/augment_cost.py --manifest /tmp/phantom/manifest.csv --size 128
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's skintumor, not an installed one

from skintumor.augment.search import SearchSettings, normalise, sample_scores, search_inner_fold, train_child
from skintumor.data.datamodule import decode_resized
from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.manifest import Manifest
from skintumor.models.module import SkinTumorClassifier


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30, help="final training epochs (study: 30)")
    parser.add_argument("--threads", type=int, default=1, help="1: CPU time is not inflated by thread spinning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = SearchSettings()  # the study's protocol: 4 inner folds, 100 trials, 5 child epochs
    manifest = Manifest.from_csv(args.manifest)
    folds = PatientGroupedFolds(manifest.labels, manifest.groups, 5, 0.2, 42)
    split = folds.split(args.fold)
    inner_train, inner_val = folds.inner_folds(args.fold, settings.n_inner)[0]
    part = folds.train_part(args.fold)
    images = dict(zip(part.tolist(), decode_resized(manifest.subset(part), args.size, with_masks=False)[0]))
    labels = np.asarray(manifest.labels)
    torch.manual_seed(0)
    module = SkinTumorClassifier(manifest.classes, class_counts=np.bincount(labels[part]).tolist(),
                                 image_size=args.size)

    def epoch(rows):
        x, y = normalise([images[i] for i in rows], settings.mean, settings.std), torch.as_tensor(labels[rows])
        return cpu(lambda: train_child(module, module.criterion, x, y, 1, 1e-4, 32, 0))

    def scoring(rows):
        x, y = normalise([images[i] for i in rows], settings.mean, settings.std), torch.as_tensor(labels[rows])
        return cpu(lambda: sample_scores(module, x, y, settings.eval_batch_size))

    epoch(split.train[:64])  # warm-up (oneDNN kernels)
    train_epoch, val_scoring = epoch(split.train), scoring(split.val)

    # one real inner fold of the search, with the default settings (pruning included)
    torch.manual_seed(1)
    child = SkinTumorClassifier(manifest.classes, class_counts=np.bincount(labels[inner_train]).tolist(),
                                image_size=args.size)
    x, y = normalise([images[i] for i in inner_train], settings.mean, settings.std), torch.as_tensor(labels[inner_train])
    child_cpu = cpu(lambda: train_child(child, child.criterion, x, y, settings.child_epochs, settings.child_lr,
                                        settings.batch_size, 0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = []
    trials_cpu = cpu(lambda: studies.append(search_inner_fold(child, [images[i] for i in inner_val], labels[inner_val],
                                                              settings, "cost-probe", 0)))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in studies[0].trials)
    search = settings.n_inner * (child_cpu + trials_cpu)
    training = args.epochs * (train_epoch + val_scoring)
    result = {"image_size": args.size, "fold": args.fold, "train_images": len(split.train),
              "val_images": len(split.val), "inner_train_images": len(inner_train),
              "inner_val_images": len(inner_val), "cpu_s_train_epoch": round(train_epoch, 2),
              "cpu_s_val_scoring": round(val_scoring, 2), "child_epochs": settings.child_epochs,
              "cpu_s_child": round(child_cpu, 1), "trials": settings.trials, "pruned": pruned,
              "cpu_s_trials": round(trials_cpu, 1), "search_cpu_s": round(search, 1),
              "training_epochs": args.epochs, "training_cpu_s": round(training, 1),
              "search_over_training": round(search / training, 3), "torch_threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
