"""Cross-validation report and model comparison from the command line.

    python -m skintumor.report SWEEP_DIR              # report.md/.html, figures/, metrics_cv.json
    python -m skintumor.report SWEEP_A SWEEP_B        # comparison.md/.html/.json in SWEEP_A/compare_<B>
    python -m skintumor.report --ensemble OUT A B C   # fold ensemble: mean probabilities -> sweep OUT

Thin wrapper around :mod:`skintumor.evaluate.report` and :mod:`skintumor.evaluate.compare`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from skintumor.cli import print_user_error
from skintumor.errors import DataError
from skintumor.evaluate.metrics import ECE_BINS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skintumor.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweeps",
        nargs="+",
        metavar="SWEEP_DIR",
        help="one sweep directory (report) or two (comparison A vs B on the same folds)",
    )
    parser.add_argument("--out", default=None, help="comparison output folder (default SWEEP_A/compare_<name of B>)")
    parser.add_argument(
        "--ensemble",
        metavar="OUT",
        default=None,
        help="average the test probabilities of two or more sweeps (same outer folds) into a new "
        "sweep directory OUT, then report it",
    )
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--bins", type=int, default=ECE_BINS, help=f"ECE bins (default {ECE_BINS})")
    args = parser.parse_args(argv)
    console = Console()
    if args.ensemble and len(args.sweeps) < 2:
        parser.error("--ensemble needs two or more sweep directories")
    if len(args.sweeps) > 2 and not args.ensemble:
        parser.error("give one sweep directory (report) or two (comparison)")
    if args.n_boot < 100:
        parser.error("--n-boot must be at least 100")
    try:
        if args.ensemble:
            from skintumor.evaluate.ensemble import ensemble_sweeps
            from skintumor.evaluate.report import build_report

            out = ensemble_sweeps(args.sweeps, args.ensemble)
            build_report(out, n_boot=args.n_boot, seed=args.seed, n_bins=args.bins, console=console)
            console.print(
                f"wrote the ensemble of {len(args.sweeps)} sweeps to {out} (report.md, report.html, figures/)"
            )
        elif len(args.sweeps) == 1:
            from skintumor.evaluate.report import build_report
            from skintumor.hydra_callbacks import explanation_sections

            sections = explanation_sections(Path(args.sweeps[0]), console)  # folds explained in training, pooled
            build_report(
                args.sweeps[0], n_boot=args.n_boot, seed=args.seed, n_bins=args.bins, console=console, sections=sections
            )
            console.print(f"wrote {args.sweeps[0]}/report.md, report.html, figures/, metrics_cv.json")
            from skintumor.dashboard import log_sweep_summary

            log_sweep_summary(args.sweeps[0])  # W&B (when the folds were logged there): the summary run
        else:
            from skintumor.evaluate.compare import build_comparison

            result = build_comparison(
                args.sweeps[0],
                args.sweeps[1],
                args.out,
                n_boot=args.n_boot,
                seed=args.seed,
                n_bins=args.bins,
                console=console,
            )
            console.print(f"wrote {result['out_dir']}/comparison.md, comparison.html, comparison.json")
            from skintumor.dashboard import log_comparison

            log_comparison(result["out_dir"], args.sweeps[0], args.sweeps[1])  # W&B: a compare run
    except DataError as err:
        print_user_error(err)  # one red line on stderr, as every command
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
