"""``python -m skintumor.explain RUN_DIR``: maps, overlays and statistics for a run's test fold (never trains)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

from skintumor.errors import ConfigError, DataError, WeightsError
from skintumor.explain.cam import METHODS
from skintumor.explain.faithfulness import PERCENTILES
from skintumor.explain.run import ROAD_IMAGES, ExplainSettings, explain_run, road_cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skintumor.explain", description=__doc__)
    parser.add_argument("run_dir", help="a training run directory (its tested checkpoint, manifest.csv, split.json)")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/explain)")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated maps (default {','.join(METHODS)}; random is always added: it is every test's baseline)",
    )
    parser.add_argument(
        "--target", choices=("pred", "true"), default="pred", help="explain the predicted or the true class"
    )
    parser.add_argument("--target-layer", default="layer4", help="layer of the gradient CAMs (e.g. layer3)")
    parser.add_argument(
        "--tolerance", type=int, default=None, help="pointing-game tolerance in px (default 15 px at 224)"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="IoU threshold, share of the map's maximum")
    parser.add_argument(
        "--road-images",
        type=int,
        default=ROAD_IMAGES,
        help=f"ROAD on N test images spread over the fold (0: off). Default {ROAD_IMAGES}: on a 140-image fold at "
        "128 px ROAD then adds about the time of the maps themselves (8 sparse solves and 9 forwards per image "
        "and map; python -m benchmarks.explain_speed measures it); more images, more power for its tests",
    )
    parser.add_argument(
        "--road-percentiles",
        default=",".join(map(str, PERCENTILES)),
        help="ROAD: keep these percentiles of pixels (removal share = 100 - p)",
    )
    parser.add_argument("--gallery-method", default="gradcam", help="map shown in the per-class galleries")
    parser.add_argument(
        "--overlays", type=int, default=None, help="overlay PNGs for the first N test images (default all)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--road-workers", type=int, default=None, help="threads for ROAD's sparse solves (default: torch's threads)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing explain folder's files")
    args = parser.parse_args(argv)
    scalars = ("target", "target_layer", "tolerance", "threshold", "road_images", "gallery_method", "overlays")
    scalars += ("batch_size", "seed", "road_workers")
    options = {k: getattr(args, k) for k in scalars}
    options["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    options["road_percentiles"] = [int(p) for p in args.road_percentiles.split(",") if p]
    try:  # the checks a config's explain.* gets: unknown maps, a gallery map not computed
        settings = ExplainSettings.from_options(options)
    except ConfigError as err:
        parser.error(str(err))
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    console = Console(stderr=True, soft_wrap=True)
    try:
        result = explain_run(args.run_dir, args.out, settings, overwrite=args.overwrite)
    except (DataError, ConfigError, WeightsError) as err:  # a user's input error: one line, exit code 2
        kind = "config" if isinstance(err, ConfigError) else "weights" if isinstance(err, WeightsError) else "data"
        console.print(f"[bold red]{kind} error:[/] {escape(str(err))}", highlight=False)
        return 2
    out = args.out or f"{args.run_dir}/explain"
    console.print(
        f"explained {result['n_test']} test images ({result['n_with_mask']} with a lesion mask) in "
        f"{result['seconds']['total']:.1f} s -> {escape(out)}",
        highlight=False,
    )
    console.print(road_cost(result), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
