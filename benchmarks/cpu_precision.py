"""CPU train-step throughput: fp32 vs bf16 autocast (``trainer.precision=bf16-mixed``), recipe network.

    python benchmarks/cpu_precision.py [--size 128] [--batch 32] [--steps 6] [--repeats 3] [--threads 2]

One training step of ``experiment=recipe``'s model as the LightningModule runs it (attention-gated
ResNet18 with the lesion decoder, channels_last, focal loss with label smoothing, the gates' lesion-mask
loss and the decoder's, AdamW) on random images and masks already in memory, with and without
``torch.autocast("cpu", bfloat16)`` (what Lightning's ``bf16-mixed`` does on a CPU). Configurations
alternate (A B A B ...) so machine noise hits both alike; images/s is the median over repeats. bf16
pays only on CPUs with native bf16 instructions (``avx512_bf16`` or AMX in ``lscpu``); elsewhere it
is emulated and slower.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skintumor.cpu import cpu_bf16_flags  # noqa: E402
from skintumor.models.module import SkinTumorClassifier  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SkinTumorClassifier(["benign", "malignant", "normal"], image_size=args.size, net={"lesion_decoder": True},
                                loss={"alpha": None, "label_smoothing": 0.1, "mask_weight": 1.0, "lesion_weight": 1.0},
                                optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    model.log = lambda *a, **k: None  # no Trainer here
    optimizer = torch.optim.AdamW(model.model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 3, (args.batch,))
    masks = (torch.rand(args.batch, 1, args.size, args.size) > 0.8).float()
    batch = (x, y, torch.arange(args.batch), masks)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model._step(batch, "train")[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rates = {"fp32": [], "bf16-mixed": []}
    for name in rates:  # warm-up: oneDNN picks its kernels on the first calls
        step(name != "fp32")
    for _ in range(args.repeats):
        for name in rates:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(name != "fp32")
            rates[name].append(args.steps * args.batch / (time.perf_counter() - start))
    result = {name: float(np.median(r)) for name, r in rates.items()}
    result |= {"ratio_bf16_to_fp32": result["bf16-mixed"] / result["fp32"], "threads": args.threads,
               "size": args.size, "batch": args.batch, "cpu_bf16_flags": cpu_bf16_flags(),
               "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "command": "python benchmarks/cpu_precision.py " + " ".join(sys.argv[1:])}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
