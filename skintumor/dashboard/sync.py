"""Upload a sweep's offline W&B runs later: ``python -m skintumor.dashboard SWEEP`` (``make sync``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from skintumor.dashboard.fold import FOLD_RECORD


def offline_runs(sweep_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """A sweep's offline W&B runs in upload order: (the training runs, every other run: summary,
    comparisons, exports), each sorted by start time. The others use the training runs' artifacts,
    so they go second."""
    runs = sorted(Path(sweep_dir).glob("**/wandb/offline-run-*"), key=lambda p: p.name)
    training = [
        p for p in runs if (p.parent / FOLD_RECORD).is_file() or (p.parent.parent / "metrics_val.json").is_file()
    ]
    return training, [p for p in runs if p not in training]


def sync_sweep(sweep_dir: str | Path, dry_run: bool = False) -> int:
    """``wandb sync`` a sweep's offline runs (:func:`offline_runs`): the training runs, then the rest.
    -> the exit code of the first sync that failed, else 0."""
    for batch in offline_runs(sweep_dir):
        if not batch:
            continue
        command = [sys.executable, "-m", "wandb", "sync", *map(str, batch)]
        print(" ".join(command), flush=True)
        if not dry_run and (code := subprocess.run(command).returncode):
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skintumor.dashboard",
        description="Upload a sweep's offline W&B runs (training runs first, then summary, comparisons, exports).",
    )
    parser.add_argument("sweep", type=Path, help="a sweep (or run) directory, e.g. outputs/cv/<name>")
    parser.add_argument("--dry-run", action="store_true", help="print the wandb sync commands, upload nothing")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        parser.error(f"{args.sweep}: not a directory")
    if not any(offline_runs(args.sweep)):
        print(f"{args.sweep}: no offline W&B runs in it", file=sys.stderr)
        return 1
    return sync_sweep(args.sweep, dry_run=args.dry_run)
