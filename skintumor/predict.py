"""Use a trained model on new scans: ``skintumor export`` writes a bundle, ``skintumor predict`` applies it.

    skintumor export outputs/cv/<sweep> --out model/ [--onnx]
    skintumor predict model/ scans/ [more files, folders, DICOM, manifest.csv] --out preds.csv --cam cams/

Thin wrappers around :mod:`skintumor.deploy`. Exit codes: 0 every input predicted; 1 some inputs
could not be read (they are listed, the rest are in the output); 2 the bundle, an option or the
inputs as a whole cannot be used (one line says why).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from skintumor.cli import exit_code
from skintumor.errors import ConfigError, DataError


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skintumor export", description="Write a model bundle from a finished run or sweep."
    )
    parser.add_argument(
        "source", type=Path, help="a run directory or a cross-validation sweep (every fold is a member)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the bundle folder to create (must not exist or be empty)"
    )
    parser.add_argument("--onnx", action="store_true", help="also write each member's decision path as ONNX")
    parser.add_argument(
        "--no-wandb", action="store_true", help="do not log the bundle to W&B (done when the folds were logged there)"
    )
    return exit_code(lambda: export(parser.parse_args(argv)))


def export(args: argparse.Namespace) -> int:
    from skintumor.deploy.bundle import export_bundle, load_bundle

    out = export_bundle(args.source, args.out, onnx=args.onnx)
    bundle = load_bundle(out)  # what was written reads back
    Console().print(f"bundle: {out} ({len(bundle.members)} member(s): {', '.join(m.name for m in bundle.members)})")
    if not getattr(args, "no_wandb", False):
        from skintumor.dashboard import log_bundle

        log_bundle(out, args.source)  # an export run whose bundle artifact uses the folds' model artifacts
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skintumor predict", description="Predict new scans with a model bundle.")
    parser.add_argument("bundle", type=Path, help="a model bundle folder (skintumor export)")
    parser.add_argument(
        "inputs", nargs="+", help="image or DICOM files, folders (recursive), or a CSV manifest with a path column"
    )
    parser.add_argument("--out", type=Path, help="write predictions to this .csv or .json (never overwritten)")
    parser.add_argument("--cam", type=Path, help="write one explanation overlay PNG per image into this new folder")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return exit_code(lambda: predict(parser.parse_args(argv)))


def predict(args: argparse.Namespace) -> int:
    from skintumor.deploy.bundle import load_bundle
    from skintumor.deploy.predict import Predictor, collect_inputs, labelled_metrics, write_predictions
    from skintumor.explain.overlay import overlay_image

    console = Console()
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and args.out.exists():
        raise DataError(f"{args.out}: already exists; predictions never overwrite a file")
    if args.cam is not None and args.cam.exists() and (not args.cam.is_dir() or any(args.cam.iterdir())):
        raise DataError(f"{args.cam}: already exists and is not empty; overlays never overwrite files")
    predictor = Predictor(load_bundle(args.bundle), args.backend, args.device)
    inputs = collect_inputs(args.inputs, predictor.classes)
    results = predictor.predict_files(inputs, args.batch_size, cam=args.cam is not None, progress=not args.no_progress)
    if args.out is not None:
        write_predictions(results, predictor.classes, args.out)
    if args.cam is not None:
        args.cam.mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(r for r in results if r.status == "ok"):
            probability = float(r.probs[predictor.classes.index(r.pred)])
            caption = f"{r.pred} {probability:.2f} (spread {float(r.spread.max()):.2f})\nresearch use only"
            overlay_image(r.image, r.cam, caption, min_side=256).save(
                args.cam / f"{i:04d}_{_safe(r.input.path.stem)}.png"
            )
    _print_results(console, results, predictor.classes, args.out)
    metrics = labelled_metrics(results, predictor.classes)
    if metrics is not None:
        _print_metrics(console, metrics)
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]data error:[/] {escape(r.message)}", highlight=False)
    return 1 if failed else 0


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def _print_results(console: Console, results, classes: list[str], out: Path | None) -> None:
    if out is not None or len(results) > 20:
        ok = sum(r.status == "ok" for r in results)
        console.print(f"{ok} of {len(results)} scans predicted" + (f": {out}" if out else ""))
        if out is not None:
            return
    table = Table("file", "prediction", *classes, "spread")
    for r in results[:20]:
        if r.status != "ok":
            table.add_row(escape(r.input.path.name), "[red]unreadable[/]", *[""] * len(classes), "")
            continue
        table.add_row(escape(r.input.path.name), r.pred, *(f"{p:.3f}" for p in r.probs), f"{r.spread.max():.3f}")
    console.print(table)


def _print_metrics(console: Console, metrics: dict) -> None:
    table = Table("metric (labelled inputs)", "value", "95% CI")
    for name in ("auroc_macro", "bal_acc", "acc", "f1_macro", "ece"):
        m = metrics[name]
        table.add_row(name, f"{m['value']:.3f}", f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
    console.print(table)


if __name__ == "__main__":
    sys.exit(predict_main())
