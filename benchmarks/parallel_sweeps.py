"""Several 5-fold sweeps at once on one machine (a lent GPU): one training process per fold.

    python benchmarks/parallel_sweeps.py --out DIR --jobs 18 --threads 1 --stop 330 \\
        --sweep ep60_s1 "seed=1 trainer.max_epochs=60" --sweep ep75_s1 "seed=1 trainer.max_epochs=75" \\
        experiment=recipe data=busi trainer.accelerator=gpu

Each sweep is written as ``DIR/NAME/fold_k``, the layout of ``python -m skintumor.train -m ...
data.fold=0,1,2,3,4``, so ``benchmarks/ensemble_val.py``, ``benchmarks/decision_bias.py`` and
``python -m skintumor.report`` read it as they read a Hydra sweep. Runs start in the order the
sweeps are given (all folds of the first sweep first); at ``--stop`` seconds the runs still going are
killed, so their folds are missing. ``DIR/times.json`` gets each run's wall seconds and exit status.
The job queue is ``recipe_ablation.py``'s.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_ablation import Job, Scheduler  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("common", nargs="*", help="overrides of every run, e.g. experiment=recipe data=busi")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sweep", nargs=2, action="append", required=True, metavar=("NAME", "OVERRIDES"),
                        help="one sweep: its directory name and its own overrides (space-separated)")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--stop", type=float, default=float("inf"), help="seconds; runs still going are killed")
    args = parser.parse_args()
    out = args.out.resolve()
    folds = [int(f) for f in args.folds.split(",")]
    if any((out / name).exists() for name, _ in args.sweep):
        sys.exit(f"{out}: a sweep directory named by --sweep exists; choose another --out (nothing is overwritten)")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    start = time.time()
    sched = Scheduler(out, args.jobs, start + args.stop, env)
    for name, overrides in args.sweep:
        for k in folds:
            run = f"{name}/fold_{k}"
            command = [sys.executable, "-m", "skintumor.train", "logger=csv", "callbacks.progress_bar=null",
                       *args.common, *overrides.split(), f"data.fold={k}", f"hydra.run.dir={out / run}"]
            sched.add(Job(run, command, name, k, 0, "sweep"))
    times = {}
    while sched.queue or sched.running:
        for job in sched.poll():
            times[job.name] = {"seconds": round(time.time() - job.started, 1), "ok": sched.done[job.name]}
            print(f"[{time.time() - start:5.0f} s] {job.name}: {'ok' if sched.done[job.name] else 'FAILED'} "
                  f"({times[job.name]['seconds']} s)", flush=True)
        if time.time() - start > args.stop:
            print(f"stop after {args.stop:.0f} s: killing {len(sched.running)} run(s), "
                  f"{len(sched.queue)} never started", flush=True)
            sched.kill_all()
            break
        time.sleep(1.0)
    command = "python benchmarks/parallel_sweeps.py " + shlex.join(sys.argv[1:])
    (out / "times.json").write_text(json.dumps({"command": command, "runs": times}, indent=2))
    return 0 if all(t["ok"] for t in times.values()) and len(times) == len(args.sweep) * len(folds) else 1


if __name__ == "__main__":
    sys.exit(main())
