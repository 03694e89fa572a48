"""Search cost vs final-training cost for one outer fold, from measured unit costs (CPU seconds).

Measures, in one process on the same images: the CPU time of one training epoch of the configured
network (plain Adam loop, batch 32: the same forward/backward work as a Lightning epoch, without its
overhead, so training comes out *cheaper* than it is) and of one search trial (augment an inner
validation split + score it, no pruning: the search comes out *dearer* than it is). Then

    search   = n_inner x (child_epochs x epoch(inner train) + trials x trial)
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

from skintumor.augment.search import SearchSettings, normalise, sample_scores, suggest_policy, train_child
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
    parser.add_argument("--probe-trials", type=int, default=12)
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
    train_epoch, val_scoring, child_epoch = epoch(split.train), scoring(split.val), epoch(inner_train)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    y_val = torch.as_tensor(labels[inner_val])
    trial_cpu = []

    def objective(trial):
        augment = suggest_policy(trial, settings).augmentation(seed=trial.number)
        def run():
            x = normalise([augment(image=images[i])["image"] for i in inner_val], settings.mean, settings.std)
            sample_scores(module, x, y_val, settings.eval_batch_size)
        trial_cpu.append(cpu(run))
        return 0.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=args.probe_trials)
    trial = float(np.median(trial_cpu))
    search = settings.n_inner * (settings.child_epochs * child_epoch + settings.trials * trial)
    training = args.epochs * (train_epoch + val_scoring)
    result = {"image_size": args.size, "fold": args.fold, "train_images": len(split.train),
              "val_images": len(split.val), "inner_train_images": len(inner_train),
              "inner_val_images": len(inner_val), "cpu_s_train_epoch": round(train_epoch, 2),
              "cpu_s_val_scoring": round(val_scoring, 2), "cpu_s_child_epoch": round(child_epoch, 2),
              "cpu_s_trial_median": round(trial, 3), "search_cpu_s": round(search, 1),
              "training_cpu_s": round(training, 1), "search_over_training": round(search / training, 3),
              "torch_threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
