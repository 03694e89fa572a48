"""Quick sanity check that the phantom's class signal is learnable from local morphology.

    python -m benchmarks.phantom_cnn_sanity [--root outputs/phantom] [--size 128] [--epochs 12] [--fold 0]

A tiny CNN (4 conv blocks, global average pooling) on 128 px images, trained on one outer fold's
training part of PatientGroupedFolds, epoch chosen on the inner validation split, test fold read once.
This is not the paper's model (the training pipeline checks that); it only shows the signal is there.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.images import read_greyscale
from skintumor.data.phantom import phantom_manifest


def tiny_cnn(n_classes: int = 3) -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, n_classes))


def load(manifest, size: int) -> torch.Tensor:
    images = [np.asarray(Image.fromarray(read_greyscale(manifest.image_path(i))).resize((size, size), Image.BILINEAR))
              for i in range(len(manifest))]
    x = torch.tensor(np.stack(images), dtype=torch.float32)[:, None] / 255.0
    return (x - 0.5) / 0.25


def predict(model, x) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]).argmax(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="outputs/phantom")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    manifest = phantom_manifest(args.root)
    x, y = load(manifest, args.size), np.asarray(manifest.labels)
    split = PatientGroupedFolds(y, manifest.groups).split(args.fold)
    model = tiny_cnn(len(manifest.classes))
    weights = torch.tensor(len(y) / (3 * np.bincount(y[split.train])), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=args.epochs)
    best, best_state = -1.0, None
    yt = torch.tensor(y)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = np.random.default_rng(epoch).permutation(split.train)
        for i in range(0, len(order), 16):
            idx = order[i:i + 16]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5  # left-right flip: anatomy has no lateral side
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            optimiser.zero_grad()
            loss_fn(model(xb), yt[idx]).backward()
            optimiser.step()
        schedule.step()
        val = balanced_accuracy_score(y[split.val], predict(model, x[split.val]))
        print(f"epoch {epoch + 1}: val balanced accuracy {val:.3f} ({time.perf_counter() - start:.0f} s)")
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test = balanced_accuracy_score(y[split.test], predict(model, x[split.test]))
    print(f"fold {args.fold}: best val {best:.3f}; test balanced accuracy {test:.3f} "
          f"({len(split.test)} images, {len(set(np.asarray(manifest.groups)[split.test]))} patients)")


if __name__ == "__main__":
    main()
