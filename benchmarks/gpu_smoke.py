"""GPU smoke test and train-step throughput: bf16 autocast x channels_last, attention-gated ResNet18.

    python -m benchmarks.gpu_smoke [--sizes 128 224] [--batch 64] [--steps 50] [--repeats 3] [--epochs 1]
                                   [--data OVERRIDE ...] [--quick] [--out DIR]

1. Smoke: ``python -m skintumor.train trainer=gpu`` (bf16-mixed; the model runs channels_last) for
   ``--epochs`` epochs on the data given with ``--data`` (default: the default phantom), which must
   write a checkpoint and test metrics (first, so that a time limit cuts the throughput rows, not
   the smoke test). Its output is in OUT/gpu_smoke/smoke.log, the run in OUT/gpu_smoke/smoke_run.
2. Throughput: the recipe's network, focal loss and AdamW on random 1-channel images already on
   the GPU (the data path is measured by the cross-validation runs instead), for fp32 / bf16
   autocast, each with and without channels_last: images/s (median over repeats, CUDA synchronised)
   and peak GPU memory (the largest over repeats). Configurations alternate (A B C D A B C D) so
   clock and neighbour noise hits them alike.
The result file is rewritten after each measurement (a run cut short by its time limit keeps what it
measured). Without CUDA it exits 1 ("no CUDA device"), except ``--quick``, which then runs a CPU
stand-in of the same code path (``trainer=cpu trainer.precision=bf16-mixed``, CPU autocast).
``--quick``: a 30-image phantom, 1 epoch, one small size, a few steps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks import common
from skintumor.models.attention_resnet import AttentionGatedResNet18
from skintumor.models.losses import FocalLoss

CONFIGS = [(bf16, cl) for bf16 in (False, True) for cl in (False, True)]


def config_name(bf16: bool, channels_last: bool) -> str:
    return f"{'bf16' if bf16 else 'fp32'}{'+channels_last' if channels_last else ''}"


def train_steps(
    device: str, size: int, batch: int, steps: int, bf16: bool, channels_last: bool, warmup: int = 5
) -> tuple[float, float | None]:
    """(images/s, peak GPU memory in GiB or None on CPU) of ``steps`` training steps after ``warmup``."""
    torch.manual_seed(0)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = AttentionGatedResNet18(num_classes=3).to(device).train().to(memory_format=fmt)
    x = torch.randn(batch, 1, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 3, (batch,), device=device)
    loss_fn, opt = FocalLoss(gamma=2.0), torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    images_per_s = steps * batch / (time.perf_counter() - start)
    return images_per_s, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def smoke(run: common.Run, device: str, epochs: int, data: list[str]) -> dict:
    """The training smoke run (a subprocess): exit status, wall time, checkpoint, test metrics."""
    import json

    work = run.work_dir.resolve()
    run_dir, log = work / "smoke_run", work / "smoke.log"
    trainer = ["trainer=gpu"] if device == "cuda" else ["trainer=cpu", "trainer.precision=bf16-mixed"]
    overrides = [
        *trainer,
        "logger=csv",
        "callbacks.progress_bar=null",
        f"trainer.max_epochs={epochs}",
        *data,
        f"hydra.run.dir={run_dir}",
    ]
    status, seconds = common.run_module("skintumor.train", overrides, log=log)
    metrics = run_dir / "metrics_test.json"
    return {
        "command": "python -m skintumor.train " + " ".join(overrides),
        "returncode": status,
        "seconds": seconds,
        "checkpoint": (run_dir / "checkpoints" / "best.ckpt").is_file(),
        "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None,
        "precision": "bf16-mixed",
        "channels_last": True,
        "log": str(log),
        "tail": log.read_text()[-1500:] if status else "",
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("gpu_smoke", __doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the training smoke run")
    p.add_argument("--data", nargs="*", default=[], help="data overrides of the smoke run")
    run = common.begin("gpu_smoke", p, argv)
    args = run.args
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.quick:
        print("gpu_smoke: no CUDA device (--quick runs a CPU stand-in)", file=sys.stderr)
        return 1
    if args.quick:
        phantom = run.work_dir.resolve() / "phantom"
        common.tiny_phantom(phantom, image_size=64)
        args.epochs, args.repeats, args.steps, args.warmup = 1, 1, *((5, 5) if device == "cuda" else (1, 1))
        args.sizes, args.batch = ([64], 16) if device == "cuda" else ([32], 4)
        args.data = [
            "data=csv",
            f"data.options.manifest={phantom / 'manifest.csv'}",
            f"data.image_size={args.sizes[0]}",
            "data.n_folds=3",
            "data.batch_size=8",
        ]
    if device == "cpu":
        common.console.print("gpu_smoke: no CUDA device: CPU stand-in (trainer=cpu, bf16-mixed; CPU autocast)")
    else:
        torch.backends.cudnn.benchmark = True
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (stand-in)",
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "throughput_img_per_s": {},
        "peak_memory_gib": {},
    }
    # the training smoke run first: under a time limit it is the part that must not be lost
    result["smoke"] = smoke(run, device, args.epochs, args.data)
    common.console.print(result["smoke"])
    run.save(result)
    for size in args.sizes:
        samples = common.alternate(
            {
                config_name(*c): (
                    lambda c=c, size=size: train_steps(device, size, args.batch, args.steps, *c, args.warmup)
                )
                for c in CONFIGS
            },
            args.repeats,
            f"{size} px",
        )
        result["throughput_img_per_s"][f"{size}px"] = {
            k: round(float(np.median([s[0] for s in v])), 1) for k, v in samples.items()
        }
        result["peak_memory_gib"][f"{size}px"] = {
            k: (round(max(s[1] for s in v), 3) if v[0][1] is not None else None) for k, v in samples.items()
        }
        common.console.print(size, result["throughput_img_per_s"][f"{size}px"], result["peak_memory_gib"][f"{size}px"])
        run.save(result)
    common.console.print(f"wrote {run.json_path}")
    ok = result["smoke"]["returncode"] == 0 and result["smoke"]["checkpoint"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
