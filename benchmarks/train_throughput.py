"""Train-step throughput of the full pipeline vs a bare PyTorch loop, and peak memory (RSS).

    python benchmarks/train_throughput.py [--size 224] [--steps 20] [--repeats 2]

The same images (a temporary class-folder set) and the same batch size feed:
  bare      torchvision resnet18 (1-channel conv1), Adam, cross-entropy, tensors already in memory
  pipeline  UltrasoundDataModule + SkinTumorClassifier + Lightning Trainer, plain ResNet18 (gates off)
  attention the same pipeline with the attention-gated network
All use channels_last. Configurations alternate (A B C A B C) so machine noise hits them alike.
Peak RSS is measured in a separate process that runs a short full training at batch 16.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from skintumor.data.datamodule import UltrasoundDataModule
from skintumor.models.module import SkinTumorClassifier

BATCH = 16


def make_images(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = ("cyst", "lipoma", "pilomatricoma")[i % 3]
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def bare_loop(images: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int) -> float:
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
        t = self.times[self.warmup - 1:]
        return (len(t) - 1) * BATCH / (t[-1] - t[0])


def pipeline(root: Path, size: int, attention: bool, steps: int, warmup: int) -> float:
    dm = UltrasoundDataModule(source="folder", root=str(root), image_size=size, batch_size=BATCH,
                              n_folds=5, val_fraction=0.1)
    dm.setup()
    model = SkinTumorClassifier(dm.classes, net={"attention": attention}, class_counts=dm.class_counts())
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    return timer.images_per_second()


def peak_rss(size: int) -> float:
    """GiB of peak RSS of a child process running 1 epoch of training at batch 16 (+ validation, test)."""
    code = (
        "import resource, sys, tempfile, warnings; warnings.simplefilter('ignore');"
        "from pathlib import Path; sys.path.insert(0, 'benchmarks');"
        "from train_throughput import make_images; import lightning as L;"
        "from skintumor.data.datamodule import UltrasoundDataModule;"
        "from skintumor.models.module import SkinTumorClassifier;"
        f"root = make_images(Path(tempfile.mkdtemp()), 240, {size});"
        f"dm = UltrasoundDataModule(source='folder', root=str(root), image_size={size}, batch_size=16); dm.setup();"
        "m = SkinTumorClassifier(dm.classes, class_counts=dm.class_counts());"
        "t = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator='cpu');"
        "t.fit(m, datamodule=dm); t.test(m, datamodule=dm, verbose=False);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-images", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_images(Path(tmp), args.n_images, args.size)
        dm = UltrasoundDataModule(source="folder", root=str(root), image_size=args.size)
        dm.setup()
        images = torch.stack([torch.from_numpy(im).float().div(255).sub(0.449).div(0.226)[None] for im in dm.images])
        labels = torch.tensor(dm.manifest.labels)
        results = {"bare": [], "pipeline_resnet18": [], "pipeline_attention": []}
        for _ in range(args.repeats):
            results["bare"].append(bare_loop(images, labels, args.steps, args.warmup))
            results["pipeline_resnet18"].append(pipeline(root, args.size, False, args.steps, args.warmup))
            results["pipeline_attention"].append(pipeline(root, args.size, True, args.steps, args.warmup))
    best = {k: max(v) for k, v in results.items()}  # best of repeats: the least disturbed by other load
    summary = {
        "size": args.size, "batch": BATCH, "steps": args.steps, "repeats": args.repeats,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio_resnet18_vs_bare": round(best["pipeline_resnet18"] / best["bare"], 3),
        "ratio_attention_vs_bare": round(best["pipeline_attention"] / best["bare"], 3),
        "peak_rss_gib_batch16": round(peak_rss(args.size), 2),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
