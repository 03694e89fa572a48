"""``python -m skintumor.data.phantom --out DIR``: generate the phantom (and/or an example figure) from the shell.

Exit status: 0 done, 2 a data error (a foreign non-empty ``--out``, an existing ``--figure``, bad counts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skintumor.data.phantom.dataset import generate_phantom, plan_phantom
from skintumor.data.phantom.figure import figure_examples, plot_examples
from skintumor.data.phantom.lesions import CLASSES
from skintumor.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skintumor.data.phantom",
        description="Generate the synthetic skin-tumour ultrasound phantom "
        "(PNG images, lesion masks, manifest.csv with findings).",
    )
    parser.add_argument("--out", type=Path, help="output folder (must be empty or earlier phantom output)")
    parser.add_argument("--n-patients", type=int, nargs=3, default=[149, 74, 32], metavar=("CYST", "LIPOMA", "PILO"))
    parser.add_argument("--n-images", type=int, default=698, help="images in all (1..5 views per patient)")
    parser.add_argument("--image-size", type=int, default=256, help="square images, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p-cyst-no-enhancement", type=float, default=0.15)
    parser.add_argument("--p-pilomatricoma-no-calcification", type=float, default=0.2)
    parser.add_argument("--p-lipoma-hypoechoic", type=float, default=0.2)
    parser.add_argument("--p-small", type=float, default=0.1)
    parser.add_argument("--p-annotated", type=float, default=0.3)
    parser.add_argument(
        "--caliper-readout", action="store_true", help="calipers also print the lesion width in mm (a size confounder)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (output is identical for any number)")
    parser.add_argument("--figure", type=Path, help="also write an example grid (PNG) to this path")
    parser.add_argument(
        "--figure-only", action="store_true", help="only render the figure's examples, write no data set"
    )
    args = parser.parse_args(argv)
    options = dict(
        p_cyst_no_enhancement=args.p_cyst_no_enhancement,
        p_pilomatricoma_no_calcification=args.p_pilomatricoma_no_calcification,
        p_lipoma_hypoechoic=args.p_lipoma_hypoechoic,
        p_small=args.p_small,
    )
    try:
        if args.figure_only and args.figure is None:
            raise DataError("--figure-only needs --figure PATH")
        if not args.figure_only and args.out is None:
            raise DataError("--out DIR is required (or use --figure-only --figure PATH)")
        if args.figure is not None and args.figure.exists():
            raise DataError(f"{args.figure}: file exists; choose a new path")
        if not args.figure_only:
            manifest = generate_phantom(
                args.out,
                args.n_patients,
                args.n_images,
                args.image_size,
                args.seed,
                p_annotated=args.p_annotated,
                caliper_readout=args.caliper_readout,
                n_jobs=args.jobs,
                **options,
            )
            counts = manifest.table.groupby("label")["patient_id"].nunique()
            print(
                f"wrote {len(manifest)} images of {counts.sum()} patients "
                f"({', '.join(f'{c}: {counts.get(c, 0)}' for c in CLASSES)}) to {args.out}"
            )
        if args.figure is not None:
            plans = plan_phantom(args.n_patients, args.n_images, args.seed, **options)
            examples = figure_examples(
                plans, args.image_size, args.p_annotated, per_class=6, readout=args.caliper_readout
            )
            print(f"figure: {plot_examples(examples, args.figure, per_class=6)}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
