"""Augmentation benchmark: search cost vs training cost, and none / default / learned policy.

For every outer fold asked for: run ``python -m skintumor.search`` (timed), then train the same fold
three times with ``augment=none``, ``augment=default`` and ``augment=policy`` (timed), and collect
each run's ``metrics_test.json``. Everything is a plain CLI call, so each number can be re-run by hand.

    python benchmarks/augment_ablation.py --name phantom128 --folds 0 1 \
        --data data=csv data.options.manifest=/tmp/phantom/manifest.csv data.image_size=128 \
        --train trainer.max_epochs=30 --search search.trials=100

    python benchmarks/augment_ablation.py --name busi64 --busi ../shared/data/busi --folds 0 1 \
        --data data.image_size=64 --train trainer.max_epochs=10 --search search.trials=40

``--busi DIR`` writes a CSV manifest of the BUSI images (masks left out; every image its own
patient, since BUSI has no patient ids) into the output folder and uses it. Results go to
``outputs/bench/augment/<name>/results.json`` and a markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("test/auroc_macro", "test/bal_acc", "test/acc")


def busi_manifest(busi: Path, out: Path) -> Path:
    """path,label,patient_id,mask_path for BUSI's images (not its *_mask*.png files)."""
    rows = ["path,label,patient_id,mask_path"]
    for cls in ("benign", "malignant", "normal"):
        for image in sorted((busi / cls).glob("*.png")):
            if "_mask" in image.stem:
                continue
            mask = image.with_name(image.stem + "_mask.png")
            rel = image.relative_to(busi).as_posix()
            rows.append(f"{rel},{cls},img:{rel},{mask.relative_to(busi).as_posix() if mask.is_file() else ''}")
    path = out / "busi_manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(module: str, args: list[str], log: Path) -> tuple[float, float]:
    """Run ``python -m module args``; returns (wall, CPU) seconds; raises with the log's tail on failure.

    CPU seconds (user + system of the child) are the fairer cost on a shared machine.
    """
    command = [sys.executable, "-m", module, *args]
    cpu = cpu_seconds()
    started = time.perf_counter()
    with log.open("w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        proc = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    if proc.returncode:
        raise SystemExit(f"{module} failed (see {log}):\n" + "\n".join(log.read_text().splitlines()[-20:]))
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", nargs="*", default=[], help="Hydra overrides shared by search and training")
    parser.add_argument("--train", nargs="*", default=[], help="overrides for training only")
    parser.add_argument("--search", nargs="*", default=[], help="overrides for the search only")
    parser.add_argument("--augments", nargs="+", default=["none", "default", "policy"])
    parser.add_argument("--busi", type=Path, help="BUSI folder: build a CSV manifest for it")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "augment")
    args = parser.parse_args()

    out = (args.out / args.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = list(args.data)
    if args.busi:
        data = ["data=csv", f"data.options.manifest={busi_manifest(args.busi.resolve(), out)}",
                f"data.root={args.busi.resolve()}"] + data
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["fold"], r["augment"]) for r in results}

    for fold in args.folds:
        common = data + [f"data.fold={fold}"]
        policy = out / f"search_fold{fold}" / f"policy_fold{fold}.json"
        if "policy" in args.augments and not policy.exists():
            seconds, cpu = run("skintumor.search", common + args.search + [f"hydra.run.dir={policy.parent}"],
                               out / f"search_fold{fold}.log")
            results.append({"fold": fold, "augment": "search", "seconds": round(seconds, 1), "cpu": round(cpu, 1)})
            results_path.write_text(json.dumps(results, indent=1))
        for augment in args.augments:
            if (fold, augment) in done:
                continue
            run_dir = out / f"{augment}_fold{fold}"
            extra = [f"augment.path={policy}"] if augment == "policy" else []
            seconds, cpu = run("skintumor.train", common + args.train + [f"augment={augment}", *extra, "logger=csv",
                                                                     f"hydra.run.dir={run_dir}"],
                               out / f"{augment}_fold{fold}.log")
            metrics_file = run_dir / "metrics_test.json"  # absent with test=false (cost-only runs)
            metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
            results.append({"fold": fold, "augment": augment, "seconds": round(seconds, 1), "cpu": round(cpu, 1),
                            **{m: metrics.get(m) for m in METRICS}})
            results_path.write_text(json.dumps(results, indent=1))

    print(f"| fold | run | wall s | CPU s | {' | '.join(METRICS)} |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for r in results:
        values = " | ".join("-" if r.get(m) is None else f"{r[m]:.3f}" for m in METRICS)
        print(f"| {r['fold']} | {r['augment']} | {r['seconds']} | {r.get('cpu', '-')} | {values} |")


if __name__ == "__main__":
    main()
