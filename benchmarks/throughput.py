"""Train-step throughput of the full pipeline vs a bare PyTorch loop, and peak memory (RSS), on CPU.

    python -m benchmarks.throughput [--size 224] [--steps 20] [--repeats 2] [--quick] [--out DIR]

The same images (a temporary class-folder set of random images) and the same batch size feed:
  bare      torchvision resnet18 (1-channel conv1), Adam, cross-entropy, tensors already in memory
  pipeline  UltrasoundDataModule + SkinTumorClassifier + Lightning Trainer, plain ResNet18 (gates off)
  attention the same pipeline with the attention-gated network
All use channels_last. Configurations alternate (A B C A B C) so machine noise hits them alike; each
one's best repeat is reported (the least disturbed by other load). Peak RSS is measured in a separate
process that runs one epoch of training (+ validation, test) at batch 16.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from benchmarks import common
from skintumor.data.datamodule import UltrasoundDataModule
from skintumor.models.module import SkinTumorClassifier

BATCH = 16


def make_images(root: Path, n: int, size: int) -> Path:
    """``n`` random ``size`` px images in root/<class>/ (three classes in turn)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = ("cyst", "lipoma", "pilomatricoma")[i % 3]
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def bare_loop(images: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int) -> float:
    """Images/s of a plain training loop on tensors in memory."""
    model = resnet18(num_classes=3)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n = len(images)
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        idx = torch.randint(0, n, (BATCH,))
        x = images[idx].contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - start)


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times = warmup, []

    def on_train_batch_end(self, trainer, *args):
        self.times.append(time.perf_counter())

    def images_per_second(self) -> float:
        t = self.times[self.warmup - 1 :]
        return (len(t) - 1) * BATCH / (t[-1] - t[0])


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def pipeline(root: Path, size: int, attention: bool, steps: int, warmup: int) -> float:
    """Images/s of the framework's training steps (data module, Lightning module, Trainer)."""
    dm = UltrasoundDataModule(
        source="folder", root=str(root), image_size=size, batch_size=BATCH, n_folds=5, val_fraction=0.1
    )
    dm.setup()
    model = SkinTumorClassifier(
        dm.classes, net={"attention": attention}, class_counts=dm.class_counts(), image_size=size
    )
    timer = StepTimer(max(warmup, 1))
    trainer(max_steps=max(warmup, 1) + steps, limit_val_batches=0, callbacks=[timer]).fit(model, datamodule=dm)
    return timer.images_per_second()


def rss_child(size: int, n_images: int) -> None:
    """In a fresh process (see :func:`peak_rss`): one epoch of training, validation and test; prints KiB."""
    warnings.simplefilter("ignore")
    root = make_images(Path(tempfile.mkdtemp()), n_images, size)
    dm = UltrasoundDataModule(source="folder", root=str(root), image_size=size, batch_size=BATCH)
    dm.setup()
    model = SkinTumorClassifier(dm.classes, class_counts=dm.class_counts(), image_size=size)
    t = trainer(max_epochs=1)
    t.fit(model, datamodule=dm)
    t.test(model, datamodule=dm, verbose=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss(size: int, n_images: int) -> float:
    """GiB of peak RSS of a child process running :func:`rss_child`."""
    code = f"from benchmarks.throughput import rss_child; rss_child({int(size)}, {int(n_images)})"
    out = subprocess.run([sys.executable, "-c", code], cwd=common.REPO, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("throughput", __doc__)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n-images", type=int, default=200)
    p.add_argument("--rss-images", type=int, default=240, help="images of the peak-RSS epoch")
    run = common.begin("throughput", p, argv)
    args = run.args
    if args.quick:
        args.size, args.steps, args.warmup, args.repeats, args.n_images, args.rss_images = 32, 2, 1, 1, 60, 30
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_images(Path(tmp), args.n_images, args.size)
        dm = UltrasoundDataModule(source="folder", root=str(root), image_size=args.size)
        dm.setup()
        images = torch.stack([torch.from_numpy(im).float().div(255).sub(0.449).div(0.226)[None] for im in dm.images])
        labels = torch.tensor(dm.manifest.labels)
        samples = common.alternate(
            {
                "bare": lambda: bare_loop(images, labels, args.steps, args.warmup),
                "pipeline_resnet18": lambda: pipeline(root, args.size, False, args.steps, args.warmup),
                "pipeline_attention": lambda: pipeline(root, args.size, True, args.steps, args.warmup),
            },
            args.repeats,
            "throughput",
        )
    best = {k: max(v) for k, v in samples.items()}  # best of repeats: the least disturbed by other load
    result = {
        "size": args.size,
        "batch": BATCH,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "images_per_s_all": {k: [round(x, 1) for x in v] for k, v in samples.items()},
        "ratio_resnet18_vs_bare": round(best["pipeline_resnet18"] / best["bare"], 3),
        "ratio_attention_vs_bare": round(best["pipeline_attention"] / best["bare"], 3),
        "peak_rss_gib_batch16": round(peak_rss(args.size, args.rss_images), 2),
    }
    common.console.print(result)
    common.console.print(f"wrote {run.save(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
