"""What every benchmark shares: its command-line options, its result file, timing and a tiny phantom.

A benchmark is ``python -m benchmarks.NAME [--quick] [--out DIR]`` run from the repository root. It
writes ``DIR/NAME.json`` (``NAME_quick.json`` for ``--quick``; DIR defaults to ``outputs/benchmarks``)::

    {"benchmark": NAME, "command": "python -m benchmarks.NAME ...", "quick": false,
     "date": "2026-12-05T11:20:00+00:00", "seconds": 12.3,
     "machine": {"cpu": ..., "cores": ..., "torch": ..., "torch_threads": ..., "gpu": ...},
     "result": {...}}

Files a benchmark needs besides (training runs, sweeps) go under ``DIR/NAME/`` (``NAME_quick/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("outputs/benchmarks")
console = Console(stderr=True, soft_wrap=True, highlight=False)
T = TypeVar("T")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model, core count, torch version and threads, GPU name (None without CUDA)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """``python -m benchmarks.NAME``'s argument parser: the module docstring as help, and the options
    every benchmark has."""
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a run of seconds to a minute through the whole code path (tests use it), not a measurement",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder of the result file NAME.json (NAME_quick.json with --quick); default {DEFAULT_OUT}",
    )
    return p


@dataclass
class Run:
    """One benchmark run: its parsed options, where it writes, and when it started."""

    name: str
    args: argparse.Namespace
    argv: list[str]
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now().astimezone())
    start: float = field(default_factory=time.perf_counter)

    @property
    def stem(self) -> str:
        return f"{self.name}_quick" if self.args.quick else self.name

    @property
    def json_path(self) -> Path:
        return Path(self.args.out) / f"{self.stem}.json"

    @property
    def work_dir(self) -> Path:
        """``OUT/NAME/`` (``NAME_quick/``): where the benchmark's own runs and sweeps go."""
        return Path(self.args.out) / self.stem

    @property
    def command(self) -> str:
        return f"python -m benchmarks.{self.name} {shlex.join(self.argv)}".rstrip()

    def save(self, result: dict) -> Path:
        """Write the result with the command line, the date and the machine (again after each call:
        a run cut short by a time limit keeps what it measured)."""
        payload = {
            "benchmark": self.name,
            "command": self.command,
            "quick": bool(self.args.quick),
            "date": self.started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self.start, 1),
            "machine": machine(),
            "result": result,
        }
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")
        return self.json_path


def begin(name: str, p: argparse.ArgumentParser, argv: Sequence[str] | None) -> Run:
    """Parse ``argv`` (None: the command line) and start the clock."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return Run(name, p.parse_args(argv), argv)


def alternate(configs: dict[str, Callable[[], T]], repeats: int, what: str = "measuring") -> dict[str, list[T]]:
    """Call every configuration once per round, in the same order, for ``repeats`` rounds
    (A B C A B C): load from other users and clock changes hit them alike. Each callable does its own
    warm-up and returns one measurement (a number, or a tuple of them); returns each configuration's
    measurements in call order."""
    samples: dict[str, list[T]] = {name: [] for name in configs}
    columns = [
        TextColumn(f"[bold]{what}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("", total=repeats * len(configs))
        for _ in range(repeats):
            for name, measure in configs.items():
                bar.update(task, description=name)
                samples[name].append(measure())
                bar.advance(task)
    return samples


def run_module(
    module: str, args: Sequence[str], log: Path | None = None, timeout: float | None = None
) -> tuple[int, float]:
    """``python -m MODULE ARGS`` from the repository root (output to ``log``, else inherited);
    returns (exit status, wall seconds)."""
    command = [sys.executable, "-m", module, *map(str, args)]
    console.print(f"$ python -m {module} {shlex.join(map(str, args))}" + (f"  > {log}" if log else ""))
    start = time.perf_counter()
    if log is None:
        status = subprocess.run(command, cwd=REPO, timeout=timeout).returncode
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            status = subprocess.run(
                command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
    return status, round(time.perf_counter() - start, 1)


def tiny_phantom(out_dir: Path, image_size: int = 64):
    """A 20-patient, 30-image phantom (8/6/6 patients per class: enough for patient-grouped 5-fold CV)
    with masks and findings, rendered into ``out_dir`` in a second or two; returns its Manifest."""
    from skintumor.data.phantom import generate_phantom

    return generate_phantom(out_dir, n_patients=(8, 6, 6), n_images=30, image_size=image_size, n_jobs=1, progress=False)


CLASSES = ["cyst", "lipoma", "pilomatricoma"]


def recipe_classifier(size: int, seed: int = 0):
    """The recipe's classifier (gates, lesion decoder, hflip TTA, balanced decision) random-initialised
    with ``seed``, with non-zero class offsets, in eval mode: speed does not depend on the weights."""
    from skintumor.models.module import SkinTumorClassifier

    torch.manual_seed(seed)
    classifier = SkinTumorClassifier(
        CLASSES,
        net={"attention": True, "lesion_decoder": True},
        tta="hflip",
        decision="balanced",
        image_size=size,
        loss={"alpha": None},
    )
    classifier.decision_offsets.copy_(torch.randn(len(CLASSES)) * 0.3)
    return classifier.eval()


def speckle_scans(n: int, size: int = 256, seed: int = 0) -> list:
    """``n`` synthetic B-mode-like (size, size) uint8 scans: Rayleigh speckle blurred to a grain, over
    a depth fade and a darker round 'lesion'."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    scans = []
    for _ in range(n):
        speckle = cv2.GaussianBlur(rng.rayleigh(1.0, (size, size)).astype(np.float32), (0, 0), 1.2)
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.2)
        lesion = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r**2, 0.45, 1.0)
        scans.append(np.clip(90 * speckle * (1.0 - 0.6 * yy) * lesion, 0, 255).astype(np.uint8))
    return scans
