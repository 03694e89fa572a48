"""``python -m skintumor.data check SOURCE...``: check data folders, CSV manifests or DICOM folders.

SOURCE is a folder (BUSI layout, DICOM or class folders, detected from its files unless
``--source`` says) or a CSV manifest. Prints images and patients per class, image sizes, masks,
duplicate groups, label conflicts, and every unreadable file or repeated row as a line on stderr.
Exit status: 0 clean (warnings allowed), 1 bad files or a problem that stops training (one class
only) found, 2 a source could not be read at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from skintumor.data.check import CheckReport, load_and_check
from skintumor.data.dedup import DEFAULT_MAX_DISTANCE
from skintumor.data.dicom import MULTIFRAME_RULES, is_dicom
from skintumor.data.sources import BUSI_MASK_PATTERN
from skintumor.errors import ConfigError, DataError


def detect_source(path: Path) -> str:
    """``csv`` for a .csv file; for a folder ``busi`` (``*_mask.*`` files), ``dicom`` or ``folder``."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"{path}: not a folder or a .csv manifest")
    files = [
        p
        for d in sorted(path.iterdir())
        if d.is_dir() and not d.name.startswith(".")
        for p in sorted(d.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]
    if any(BUSI_MASK_PATTERN.search(p.stem) for p in files):
        return "busi"
    if files and sum(is_dicom(p) for p in files[:50]) > len(files[:50]) / 2:
        return "dicom"
    return "folder"


def source_options(path: Path, kind: str, args: argparse.Namespace) -> dict:
    options: dict = {"classes": args.classes.split(",") if args.classes else None}
    if kind == "csv":
        options.update(manifest=path, root=args.root)
    elif kind == "dicom" and path.suffix.lower() == ".csv":
        options.update(manifest=path, root=args.root, multiframe=args.multiframe)
    else:
        options["root"] = path
        if kind == "folder":
            options["patients_csv"] = args.patients
        if kind == "dicom":
            options["multiframe"] = args.multiframe
    return options


def print_report(report: CheckReport, console: Console, shown: int = 20) -> None:
    """The report as rich tables: classes, sizes, duplicates, conflicts, warnings, errors (all)."""
    manifest = report.manifest
    table = Table(
        title=escape(f"{manifest.root}  ({len(manifest)} images, {manifest.table['patient_id'].nunique()} patients)")
    )
    for col in report.classes.columns:
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in report.classes.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    sizes = report.sizes.dropna()
    if len(sizes):
        distinct = sizes.value_counts()
        console.print(
            f"image sizes (H x W): {len(distinct)} distinct; "
            f"height {int(sizes.height.min())}..{int(sizes.height.max())}, "
            f"width {int(sizes.width.min())}..{int(sizes.width.max())}; most common "
            + ", ".join(f"{int(h)}x{int(w)} ({n})" for (h, w), n in distinct.head(3).items())
        )
    dup = report.duplicates
    if dup is not None:
        console.print(f"duplicates (max_distance {dup.max_distance}): {dup.summary()}")
        paths = manifest.table["path"]
        if dup.groups:
            groups = Table(title=f"duplicate groups (largest {min(shown, len(dup.groups))} of {len(dup.groups)})")
            groups.add_column("size", justify="right")
            groups.add_column("images")
            for g in dup.groups[:shown]:
                groups.add_row(str(len(g)), escape(", ".join(f"{paths[i]} ({manifest.table['label'][i]})" for i in g)))
            console.print(groups)
        if len(dup.conflicts):
            conflicts = Table(title=f"label conflicts ({len(dup.conflicts)})", style="yellow")
            for col in ("distance", "image", "label", "duplicate", "label "):
                conflicts.add_column(col)
            for row in dup.conflicts.itertuples():
                conflicts.add_row(
                    *(
                        escape(str(v))
                        for v in (
                            row.distance,
                            paths[row.i],
                            manifest.table["label"][row.i],
                            paths[row.j],
                            manifest.table["label"][row.j],
                        )
                    )
                )
            console.print(conflicts)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True)  # the report on stdout, each error a line on stderr
    for line in report.errors + report.problems:
        errors.print(f"[red]error:[/red] {escape(line)}", highlight=False)
    found = [f"{len(report.errors)} bad file(s)"] * bool(report.errors)
    found += [f"{len(report.problems)} problem(s) that stop training"] * bool(report.problems)
    verdict = "[green]OK[/green]" if report.ok else f"[red]{', '.join(found)}[/red]"
    console.print(f"{verdict}  ({report.seconds:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skintumor.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check data sources and list every problem")
    check.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="data folder or CSV manifest")
    check.add_argument(
        "--source",
        choices=["auto", "busi", "folder", "dicom", "csv"],
        default="auto",
        help="source type (default: detected from the files)",
    )
    check.add_argument(
        "--root", type=Path, help="CSV manifests: folder the paths are relative to (default: the CSV's folder)"
    )
    check.add_argument("--classes", help="comma-separated class names, in label order")
    check.add_argument("--patients", type=Path, help="class folders: CSV with path, patient_id")
    check.add_argument(
        "--multiframe",
        choices=MULTIFRAME_RULES,
        default="middle",
        help="DICOM clips: read the middle frame, or refuse them",
    )
    check.add_argument(
        "--max-distance",
        type=int,
        default=DEFAULT_MAX_DISTANCE,
        help=f"near-duplicate threshold, pHash+dHash bits 0..128 (default {DEFAULT_MAX_DISTANCE})",
    )
    check.add_argument("--no-dedup", action="store_true", help="skip duplicate detection")
    check.add_argument("--show", type=int, default=20, help="duplicate groups to list (default 20)")
    args = parser.parse_args(argv)

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that file names are not wrapped
        console = Console(width=200)
    status = 0
    for path in args.sources:
        try:
            kind = detect_source(path) if args.source == "auto" else args.source
            console.rule(f"{escape(str(path))}  [dim](source: {kind})[/dim]")
            report = load_and_check(
                kind,
                dedup=not args.no_dedup,
                max_distance=args.max_distance,
                progress=console.is_terminal,
                **source_options(path, kind, args),
            )
        except (DataError, ConfigError, OSError) as err:
            Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
            status = max(status, 2)
            continue
        print_report(report, console, shown=args.show)
        if not report.ok:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
