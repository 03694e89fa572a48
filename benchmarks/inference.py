"""Inference speed of the deployment path (``skintumor predict``) vs the bare network, on CPU.

    python -m benchmarks.inference [--size 224] [--members 5] [--batch 32] [--repeats 3]
                                   [--steps 5] [--singles 32] [--quick] [--out DIR]

The network is the recipe's (attention-gated ResNet18 with the lesion decoder, which inference does
not run; hflip TTA; balanced decision), random-initialised and seeded: speed does not depend on the
weights. ``--members`` of them, each with non-zero class offsets, are written into a temporary
bundle laid out as ``export_bundle`` writes one (model.json, safetensors, ONNX decision paths) and
read back with ``load_bundle``. Inputs: synthetic 256 x 256 uint8 speckle scans, preprocessed by
``Predictor.preprocess`` to ``--size`` px.

Configurations (images/s, each call to :func:`benchmarks.common.alternate` measures every one in turn):
  bare_1x                   the bare network's forward pass, torch.no_grad, NCHW contiguous weights
                            and inputs, batch ``--batch``: what one forward costs
  bare_2x                   the same on the image and its mirror (precomputed): what hflip TTA costs
  bare_2x_b1                bare_2x at batch 1
  bare_2x_cl                bare_2x in channels_last (the format predict runs in; for information)
  torch / onnx              Predictor.predict_batch on the preprocessed batch (one model)
  torch_e2e / onnx_e2e      Predictor.preprocess of the decoded uint8 scans + predict_batch (one model)
  torch_ensemble / onnx_ensemble    predict_batch with every member
  *_single                  the same four at batch 1 (one image per call)
  torch_single_cam          Predictor.predict_files of one PNG with cam=True (grad-CAM), one model
Each configuration's ratio is to its matching bare loop: bare_2x for the batched ones (the predict
path runs TTA), bare_2x_b1 for batch 1. Targets: predict (torch, batched, one model) >= 0.9 x bare_2x;
ONNX Runtime >= torch eager (batched, one model); one image + CAM < 150 ms. Figures: the median over
``--repeats`` (and min-max). ``--threads``: torch's threads (ONNX Runtime keeps its default).
``--quick``: 32 px, 2 members, batch 4, 1 repeat, 2 steps, 1 torch thread (not a measurement: a
pass through the code path).
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image
from rich.table import Table

from benchmarks import common
from skintumor.deploy import bundle as bundles
from skintumor.deploy.predict import Input, Predictor

SCAN = 256  # px of the synthetic scans before preprocessing
CAM_TARGET_MS = 150.0


def images_per_second(step: Callable[[int], object], calls: int, per_call: int, warmup: int = 1) -> float:
    """``warmup`` untimed calls of ``step(i)``, then ``calls`` timed ones of ``per_call`` images each."""
    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(calls):
        step(i)
    return calls * per_call / (time.perf_counter() - start)


@dataclass
class Config:
    """One measured configuration: how many images a call takes, the members it runs, the bare loop
    it is compared with, and ``step(i)``, one call."""

    batch: int
    members: int
    baseline: str | None
    step: Callable[[int], object]
    backend: str = "torch"


def configurations(args, bundle: bundles.Bundle, scans: list[np.ndarray], pngs: list[Path]) -> dict[str, Config]:
    b, m = args.batch, len(bundle.members)
    one = bundles.Bundle(bundle.path, bundle.meta, bundle.members[:1])
    predictors = {
        (backend, k): Predictor(source, backend)
        for backend in ("torch", "onnx")
        for k, source in ((1, one), (m, bundle))
    }
    torch_one = predictors["torch", 1]
    x = torch.stack([torch_one.preprocess(scan)[1] for scan in scans])  # (B, 1, S, S), NCHW contiguous
    mirrored = torch.flip(x, dims=[-1]).contiguous()
    singles = [x[i : i + 1] for i in range(len(x))]
    single_mirrors = [mirrored[i : i + 1] for i in range(len(x))]
    # the bare network: a plain-format copy of member 0's (the classifier keeps its own channels_last)
    nchw = copy.deepcopy(bundle.members[0].classifier.model).to(memory_format=torch.contiguous_format).eval()
    cl = bundle.members[0].classifier.model
    x_cl, mirrored_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, mirrored))

    @torch.no_grad()
    def bare(*inputs, net=nchw):
        for tensor in inputs:
            net(tensor)

    def end_to_end(predictor: Predictor):
        return lambda i: predictor.predict_batch(torch.stack([predictor.preprocess(scan)[1] for scan in scans]))

    configs = {
        "bare_1x": Config(b, 1, None, lambda i: bare(x)),
        "bare_2x": Config(b, 1, None, lambda i: bare(x, mirrored)),
        "bare_2x_b1": Config(1, 1, None, lambda i: bare(singles[i % b], single_mirrors[i % b])),
        "bare_2x_cl": Config(b, 1, "bare_2x", lambda i: bare(x_cl, mirrored_cl, net=cl)),
    }
    for backend in ("torch", "onnx"):
        p1, pm = predictors[backend, 1], predictors[backend, m]
        configs |= {
            backend: Config(b, 1, "bare_2x", lambda i, p=p1: p.predict_batch(x), backend),
            f"{backend}_e2e": Config(b, 1, "bare_2x", end_to_end(p1), backend),
            f"{backend}_ensemble": Config(b, m, "bare_2x", lambda i, p=pm: p.predict_batch(x), backend),
            f"{backend}_single": Config(1, 1, "bare_2x_b1", lambda i, p=p1: p.predict_batch(singles[i % b]), backend),
            f"{backend}_ensemble_single": Config(
                1, m, "bare_2x_b1", lambda i, p=pm: p.predict_batch(singles[i % b]), backend
            ),
        }
    configs["torch_single_cam"] = Config(
        1,
        1,
        "bare_2x_b1",
        lambda i: torch_one.predict_files([Input(pngs[i % len(pngs)])], batch_size=1, cam=True, progress=False),
    )
    return configs


def summarise(configs: dict[str, Config], samples: dict[str, list[float]]) -> dict[str, dict]:
    """Per configuration: images/s (median, min, max), ms per image, and the ratio to its bare loop."""
    rows = {}
    for name, config in configs.items():
        values = samples[name]
        median = statistics.median(values)
        rows[name] = {
            "backend": "torch (bare)" if name.startswith("bare") else config.backend,
            "batch": config.batch,
            "members": config.members,
            "images_per_s": round(median, 2),
            "images_per_s_min": round(min(values), 2),
            "images_per_s_max": round(max(values), 2),
            "images_per_s_all": [round(v, 2) for v in values],
            "ms_per_image": round(1000 / median, 2),
            "baseline": config.baseline,
        }
    for row in rows.values():
        row["ratio_to_baseline"] = (
            round(row["images_per_s"] / rows[row["baseline"]]["images_per_s"], 3) if row["baseline"] else None
        )
    return rows


def table(rows: dict[str, dict], size: int, batch: int) -> Table:
    out = Table(
        title=f"inference at {size} px on CPU: batch {batch} (_single: 1), median over repeats",
        caption="ratio: to bare_2x (batched, NCHW) or bare_2x_b1 (_single, _cam): the bare network on image + mirror",
    )
    for column in ("configuration", "M", "images/s", "min-max", "ms/image", "ratio"):
        out.add_column(column, justify="left" if column == "configuration" else "right", no_wrap=True)
    for name, r in rows.items():
        ratio = r["ratio_to_baseline"]
        out.add_row(
            name,
            str(r["members"]),
            f"{r['images_per_s']:.1f}",
            f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}",
            f"{r['ms_per_image']:.1f}",
            "" if ratio is None else f"{ratio:.2f}",
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("inference", __doc__)
    p.add_argument("--size", type=int, default=224, help="network input size, px")
    p.add_argument("--members", type=int, default=5, help="members of the ensemble bundle")
    p.add_argument("--batch", type=int, default=32, help="batch of the batched configurations")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed batches per batched measurement")
    p.add_argument("--singles", type=int, default=32, help="timed single images per batch-1 measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; --quick: 1)")
    run = common.begin("inference", p, argv)
    args = run.args
    if args.quick:
        args.size, args.members, args.batch, args.repeats, args.steps, args.singles = 32, 2, 4, 1, 2, 4
        args.threads = args.threads or 1  # on a shared machine, 2+ threads can stall on each other
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads or threads)
        return measure(run)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test) keeps its own


def measure(run: common.Run) -> int:
    args = run.args
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ONNX exporter's and grad-cam's chatter
        with common.console.status(f"writing a {args.members}-member bundle at {args.size} px (ONNX export)"):
            members = {f"fold_{i}": common.recipe_classifier(args.size, seed=i) for i in range(args.members)}
            bundle = bundles.load_bundle(bundles.write_bundle(Path(tmp) / "model", members, onnx=True))
        bundle_seconds = time.perf_counter() - started
        scans = common.speckle_scans(args.batch, SCAN)
        pngs = []
        for i, scan in enumerate(scans):
            pngs.append(Path(tmp) / f"scan_{i}.png")
            Image.fromarray(scan).save(pngs[-1])
        configs = configurations(args, bundle, scans, pngs)
        measures = {
            name: (
                lambda c=c: images_per_second(
                    c.step, args.steps if c.batch > 1 else args.singles, c.batch, warmup=1 if c.batch > 1 else 2
                )
            )
            for name, c in configs.items()
        }
        samples = common.alternate(measures, args.repeats, "inference")
    rows = summarise(configs, samples)
    ips = {name: r["images_per_s"] for name, r in rows.items()}
    result = {
        "size": args.size,
        "scan_size": SCAN,
        "members": args.members,
        "batch": args.batch,
        "repeats": args.repeats,
        "steps": args.steps,
        "singles": args.singles,
        "onnxruntime": onnxruntime.__version__,  # threads: its default (OnnxMember sets none)
        "bundle_seconds": round(bundle_seconds, 1),
        "configurations": rows,
        "torch_over_bare_2x_cl": round(ips["torch"] / ips["bare_2x_cl"], 3),
        "onnx_over_torch": {
            kind: round(ips[f"onnx{kind}"] / ips[f"torch{kind}"], 3)
            for kind in ("", "_e2e", "_ensemble", "_single", "_ensemble_single")
        },
        "targets": {
            "predict_ge_0.9x_bare": rows["torch"]["ratio_to_baseline"] >= 0.9,
            "onnx_ge_torch": ips["onnx"] >= ips["torch"],
            "single_cam_under_150ms": rows["torch_single_cam"]["ms_per_image"] < CAM_TARGET_MS,
        },
    }
    common.console.print(table(rows, args.size, args.batch))
    common.console.print({k: result[k] for k in ("torch_over_bare_2x_cl", "onnx_over_torch", "targets")})
    common.console.print(f"wrote {run.save(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
