"""``skintumor`` (or ``python -m skintumor``): one front door to the command-line tools.

skintumor train [hydra overrides]        train one fold (also: skintumor-train; -m for sweeps)
skintumor check SOURCE...                check a data folder or CSV manifest
skintumor report SWEEP [SWEEP_B]         cross-validation report, or a comparison
skintumor explain RUN_DIR                explanations and their agreement with the lesion
skintumor export RUN_OR_SWEEP --out DIR  a model bundle (safetensors, model.json, optional ONNX)
skintumor predict BUNDLE INPUT...        probabilities and overlays for new scans
skintumor serve BUNDLE                   a local web page for the bundle (http://127.0.0.1:8000/)
"""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "train one fold with Hydra overrides (a sweep with -m)",
    "check": "check data sources and list every problem",
    "report": "cross-validation report of a sweep, or a comparison of two",
    "explain": "explanation maps of a run's test fold and their agreement with the lesion",
    "export": "write a model bundle from a finished run or sweep",
    "predict": "predict new scans with a model bundle",
    "serve": "a local web page that predicts scans with a model bundle",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip().splitlines()[0] + "\n\ncommands:")
        for name, what in COMMANDS.items():
            print(f"  {name:<8} {what}")
        print("\n`skintumor COMMAND --help` tells more.")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from skintumor import train

        sys.argv = ["skintumor-train", *rest]
        return train.main() or 0
    if command == "check":
        from skintumor.data.__main__ import main as check

        return check(["check", *rest])
    if command == "report":
        from skintumor.report import main as report

        return report(rest)
    if command == "explain":
        from skintumor.explain.__main__ import main as explain

        return explain(rest)
    if command == "serve":
        from skintumor.deploy.serve.cli import serve_main

        return serve_main(rest)
    from skintumor.predict import export_main, predict_main

    return (export_main if command == "export" else predict_main)(rest)


if __name__ == "__main__":
    sys.exit(main())
