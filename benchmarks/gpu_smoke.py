"""GPU smoke test and train-step throughput: bf16 autocast x channels_last, attention-gated ResNet18.

    python benchmarks/gpu_smoke.py --out DIR [--sizes 128 224] [--batch 64] [--steps 50]

1. Smoke: ``python -m skintumor.train trainer=gpu`` (bf16-mixed, channels_last) for 2 epochs on the
   data given with ``--data``, which must write a checkpoint and test metrics (first, so that a time
   limit cuts the throughput rows, not the smoke test).
2. Throughput: the recipe's network, focal loss and AdamW on random 1-channel images already on
   the GPU (the data path is measured by the ablation runs instead), for fp32 / bf16 autocast, each
   with and without channels_last. Configurations alternate (A B C D A B C D) so clock and
   neighbour noise hits them alike; images/s is the median over repeats, with CUDA synchronised.
Writes ``DIR/gpu_smoke.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skintumor.models.attention_resnet import AttentionGatedResNet18  # noqa: E402
from skintumor.models.losses import FocalLoss  # noqa: E402


def steps_per_second(size: int, batch: int, steps: int, bf16: bool, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = AttentionGatedResNet18(num_classes=3).cuda().train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 1, size, size, device="cuda").to(memory_format=fmt)
    y = torch.randint(0, 3, (batch,), device="cuda")
    loss_fn, opt = FocalLoss(gamma=2.0), torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def save(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_smoke.json").write_text(json.dumps(result, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", nargs="*", default=[], help="data overrides of the 2-epoch smoke run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
              "steps": args.steps, "command": "python benchmarks/gpu_smoke.py " + " ".join(sys.argv[1:]),
              "throughput_img_per_s": {}}
    # the training smoke run first: under a time limit it is the part that must not be lost
    run_dir = args.out / "smoke_run"
    command = [sys.executable, "-m", "skintumor.train", "trainer=gpu", "logger=csv", "callbacks.progress_bar=null",
               "trainer.max_epochs=2", *args.data, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    metrics = run_dir / "metrics_test.json"
    result["smoke"] = {"command": " ".join(command[1:]), "returncode": proc.returncode,
                       "seconds": round(time.perf_counter() - start, 1),
                       "checkpoint": (run_dir / "checkpoints" / "best.ckpt").is_file(),
                       "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None,
                       "precision": "bf16-mixed (trainer=gpu)", "tail": proc.stderr[-1500:] if proc.returncode else ""}
    print(json.dumps(result["smoke"], indent=1)[:1500], flush=True)
    save(args.out, result)

    configs = [(bf16, cl) for bf16 in (False, True) for cl in (False, True)]
    for size in args.sizes:
        samples = {c: [] for c in configs}
        for _ in range(args.repeats):
            for bf16, cl in configs:
                samples[(bf16, cl)].append(steps_per_second(size, args.batch, args.steps, bf16, cl) * args.batch)
        table = {f"{'bf16' if bf16 else 'fp32'}{'+channels_last' if cl else ''}": round(float(np.median(v)), 1)
                 for (bf16, cl), v in samples.items()}
        result["throughput_img_per_s"][f"{size}px"] = table
        print(size, table, flush=True)
        save(args.out, result)  # a run cut short by its time limit keeps what it measured

    ok = proc.returncode == 0 and result["smoke"]["checkpoint"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
