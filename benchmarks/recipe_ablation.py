"""How the recipe (issue 8) was chosen: one-factor-at-a-time ablation, selection on inner validation.

Stage 1 ("explore") trains every variant below on the same 5 outer folds (seed 42). Each variant
changes one thing of ``experiment=recipe`` (the starting guess), or is a reference (the study's
recipe; plain ResNet18 under the recipe). Stage 2 ("final") adopts, per factor, the option whose
**mean inner-validation score** -- (val macro AUROC + val balanced accuracy) / 2 of the selected
checkpoint, averaged over the folds -- beats the starting guess by at least ``--margin``; test folds
play no part in it. The resulting recipe is trained with 3 more seeds, plain ResNet18 under it
(gates off), and two more fold-ensemble members (``data.inner_fold=1,2``).

Every run is ``python -m skintumor.train`` (a config, never a code edit), one process per run,
``--jobs`` at a time; ``results.jsonl`` gets one line per finished run and ``summary.md`` the tables.

    python benchmarks/recipe_ablation.py --out outputs/ablation --jobs 1 data=busi          # CPU: days
    python benchmarks/recipe_ablation.py --out $OUT/abl --jobs 14 --budget 480 \\
        data=csv data.options.manifest=.busi_carry/manifest.csv data.dedup=false trainer.accelerator=gpu

(``benchmarks/portable_copy.py`` writes that ``.busi_carry`` copy: same pixels, same folds.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skintumor.data.manifest import DataError  # noqa: E402
from skintumor.evaluate.metrics import classification_metrics  # noqa: E402
from skintumor.evaluate.report import load_sweep  # noqa: E402

BASE = ["experiment=recipe", "logger=csv", "callbacks.progress_bar=null", "data.seed=42"]
# The starting guess the stage-1 variants are relative to. experiment=recipe has since adopted the
# selection (balanced sampling, mild augmentation); these overrides undo that, so the first
# ablation stays reproducible. --base "" starts from experiment=recipe as it is now.
STARTING_GUESS = "augment=strong data.sampler=null model.loss.alpha=auto"

# name -> (factor, overrides, what it tests). "reference" rows are never adopted.
VARIANTS: dict[str, tuple[str, list[str], str]] = {  # in priority order: earlier ones finish first
    "recipe": ("reference", [], "the starting guess: experiment=recipe"),
    "resnet18": ("reference", ["model.net.attention=false"], "plain ResNet18 (gates off) under the recipe"),
    "study": ("reference", ["experiment=paper", "data.image_size=128", "augment=default"],
              "the study's recipe at 128 px: Adam 1e-4, StepLR(7, 0.1), 30 epochs, batch 16, mild aug"),
    "balanced": ("balance", ["data.sampler=balanced", "model.loss.alpha=null"],
                 "balanced sampling instead of focal alpha"),
    "aug_default": ("augment", ["augment=default"], "the mild hand-made augmentation instead of strong"),
    "epochs75": ("length", ["trainer.max_epochs=75"], "75 epochs instead of 60"),
    "epochs30": ("length", ["trainer.max_epochs=30"], "30 epochs instead of 60"),
    "ema": ("averaging", ["model.ema_decay=0.995"], "EMA of the weights (decay 0.995)"),
    "softmax": ("gates", ["model.net.normalization=softmax"], "spatial-softmax gates instead of sigmoid"),
    "deep_sup": ("aggregation", ["model.net.aggregation=deep_sup"], "deep supervision of the branch heads"),
    "onecycle": ("schedule", ["model.scheduler.name=onecycle"], "one-cycle instead of cosine with warm-up"),
    "no_smoothing": ("smoothing", ["model.loss.label_smoothing=0.0"], "no label smoothing (0.1)"),
    "lr3e-3": ("optimizer", ["model.optimizer.lr=3e-3"], "AdamW lr 3e-3 instead of 1e-3"),
    "wd5e-4": ("optimizer", ["model.optimizer.weight_decay=5e-4"], "weight decay 5e-4 instead of 0.05"),
    "batch16": ("batch", ["data.batch_size=16"], "batch 16 instead of 32"),
    "no_tta": ("tta", ["model.tta=null"], "no test-time flip"),
    "aug_policy": ("augment", ["augment=policy", "augment.path={policy}"],
                   "the learned policy (searched per outer fold) instead of strong"),
    "mask": ("mask", ["model.loss.mask_weight=1.0"], "the gates also learn the lesion masks (weight 1)"),
    "empty_mask": ("mask", ["model.loss.empty_mask=background"], "empty masks (normal images) teach the gates to stay off"),
    "mixup": ("mixing", ["model.mixing.mixup_alpha=0.2"], "mixup of training batches (alpha 0.2), masks mixed alike"),
}
SEARCH = ["data.image_size=128", "search.trials=50", "data.seed=42"]  # half the study's TPE budget per inner fold


def merge(*override_lists) -> list[str]:
    """Overrides in order, a later ``key=value`` replacing an earlier one of the same key (Hydra
    refuses a group given twice)."""
    merged: dict[str, str] = {}
    for overrides in override_lists:
        for o in overrides:
            merged.pop(o.split("=", 1)[0], None)
            merged[o.split("=", 1)[0]] = o
    return list(merged.values())


@dataclass
class Job:
    name: str                      # run directory, relative to --out
    command: list[str]
    variant: str
    fold: int
    seed: int
    stage: str
    needs: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    started: float = 0.0
    log: object = None


def train_job(out: Path, variant: str, overrides: list[str], fold: int, seed: int, stage: str, data: list[str],
              tag: str | None = None, start: list[str] = ()) -> Job:
    """One ``skintumor.train`` run: experiment=recipe, then ``start`` (the starting point), the data,
    the variant's overrides."""
    name = f"{tag or variant}/fold_{fold}"
    needs = []
    resolved = []
    for o in overrides:
        if "{policy}" in o:
            policy = out / "policies" / f"policy_fold{fold}.json"
            needs.append(f"search/fold_{fold}")
            o = o.replace("{policy}", str(policy))
        resolved.append(o)
    own_experiment = any(o.startswith("experiment=") for o in resolved)  # the study's row: no recipe underneath
    base = [b for b in BASE if not (own_experiment and b.startswith("experiment="))]
    overrides = merge(base, [] if own_experiment else start, data, resolved,
                      [f"data.fold={fold}", f"seed={seed}", f"hydra.run.dir={out / name}"])
    command = [sys.executable, "-m", "skintumor.train", *overrides]
    # explore rows group by variant over seeds; final rows by their directory
    return Job(name, command, variant if stage == "explore" else (tag or variant), fold, seed, stage, needs)


def search_job(out: Path, fold: int, data: list[str], extra: list[str]) -> Job:
    train_data = [d for d in data if not d.startswith(("trainer.", "data.batch_size"))]
    device = "cuda" if any(d == "trainer.accelerator=gpu" for d in data) else "cpu"
    name = f"search/fold_{fold}"
    command = [sys.executable, "-m", "skintumor.search", *train_data, *SEARCH, *extra, f"data.fold={fold}",
               f"search.device={device}", f"output={out / 'policies' / f'policy_fold{fold}.json'}",
               f"hydra.run.dir={out / name}"]
    return Job(name, command, "search", fold, 42, "explore")


def read_run(run_dir: Path) -> dict | None:
    """Validation (what selected the checkpoint) and test metrics of one finished run."""
    try:
        val = json.loads((run_dir / "metrics_val.json").read_text())
        test = json.loads((run_dir / "metrics_test.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {"val_auroc": val.get("val/auroc_macro"), "val_bal_acc": val.get("val/bal_acc"),
            "gate2_spread": val.get("val/gate2_spread"), "gate3_spread": val.get("val/gate3_spread"),
            "gate2_cv": val.get("val/gate2_cv"), "gate3_cv": val.get("val/gate3_cv"),
            "test_auroc": test.get("test/auroc_macro"), "test_bal_acc": test.get("test/bal_acc")}


def pooled(sweep_dir: Path) -> dict:
    """Pooled out-of-fold test metrics of a sweep (NaN when folds are missing)."""
    try:
        sweep = load_sweep(sweep_dir)
    except DataError:
        return {}
    table = sweep.pooled()
    m = classification_metrics(table["y"], table[[f"p_{c}" for c in sweep.classes]].to_numpy(), sweep.classes,
                               scores=table[[f"score_{c}" for c in sweep.classes]].to_numpy())
    return m | {"folds": len(sweep.folds), "complete": not sweep.missing}


class Scheduler:
    """Run jobs ``jobs`` at a time; a job starts once the jobs it needs have finished."""

    def __init__(self, out: Path, jobs: int, deadline: float, env: dict):
        self.out, self.jobs, self.deadline, self.env = out, jobs, deadline, env
        self.queue: list[Job] = []
        self.running: list[Job] = []
        self.done: dict[str, bool] = {}

    def add(self, job: Job) -> None:
        self.queue.append(job)

    def _start(self, job: Job) -> None:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        job.log = open(self.out / "logs" / (job.name.replace("/", "__") + ".log"), "w")
        job.started = time.time()
        job.process = subprocess.Popen(job.command, cwd=REPO, stdout=job.log, stderr=subprocess.STDOUT, env=self.env)
        self.running.append(job)

    def poll(self) -> list[Job]:
        """Start what can start, return the jobs that finished since the last call."""
        finished = []
        for job in list(self.running):
            if job.process.poll() is not None:
                job.log.close()
                self.running.remove(job)
                self.done[job.name] = job.process.returncode == 0
                finished.append(job)
        if time.time() < self.deadline:
            for job in list(self.queue):
                if len(self.running) >= self.jobs:
                    break
                if any(n not in self.done for n in job.needs):
                    continue
                self.queue.remove(job)
                if all(self.done[n] for n in job.needs):
                    self._start(job)
                else:
                    self.done[job.name] = False  # what it needed failed
        return finished

    def kill_all(self) -> None:
        for job in self.running:
            job.process.kill()


def variant_scores(results: list[dict], variants: list[str], folds: list[int], n_seeds: int = 1) -> dict[str, dict]:
    """Mean over folds (and seeds) of val AUROC, val balanced accuracy and their mean (the selection score)."""
    scores = {}
    for v in variants:
        rows = [r for r in results if r["variant"] == v and r["stage"] == "explore" and r.get("val_auroc") is not None]
        if sorted(r["fold"] for r in rows) != sorted(folds * n_seeds):
            continue  # incomplete variants are never adopted
        auroc = float(np.mean([r["val_auroc"] for r in rows]))
        bal = float(np.mean([r["val_bal_acc"] for r in rows]))
        scores[v] = {"val_auroc": auroc, "val_bal_acc": bal, "score": (auroc + bal) / 2}
    return scores


def select(scores: dict[str, dict], margin: float, reference: float | None = None) -> tuple[list[str], list[str]]:
    """Per factor, the best option if it beats the starting point's score (stage 1's "recipe" row, or
    ``reference``) by ``margin``: (adopted, overrides)."""
    if reference is None and "recipe" not in scores:
        return [], []
    reference = scores["recipe"]["score"] if reference is None else reference
    adopted = []
    for factor in sorted({f for f, _, _ in VARIANTS.values()} - {"reference"}):
        options = [(scores[v]["score"], v) for v, (f, _, _) in VARIANTS.items() if f == factor and v in scores]
        if options and max(options)[0] >= reference + margin:
            adopted.append(max(options)[1])
    return adopted, [o for v in adopted for o in VARIANTS[v][1]]


def fmt(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def write_summary(out: Path, results: list[dict], scores: dict, adopted: list[str], final: list[str],
                  command: str) -> None:
    lines = [f"Command: `{command}`", ""]
    lines += ["## Stage 1: one factor at a time (same 5 folds; OOF test: mean over the seeds' pooled sweeps)", "",
              "| variant | factor | what | seeds | val AUROC | val bal. acc | **score** (selects) | OOF test AUROC | "
              "OOF test bal. acc | normal sens. | gate2 / gate3 cv | s / run |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, (factor, _, what) in VARIANTS.items():
        rows = [r for r in results if r["variant"] == v and r["stage"] == "explore"]
        sweeps = sorted({r["run"].split("/")[0] for r in rows})
        if not sweeps:
            continue
        pools = [pooled(out / d) for d in sweeps]
        test = {k: float(np.mean([p.get(k, np.nan) for p in pools])) for k in ("auroc_macro", "bal_acc", "sens_normal")}
        complete = all(p.get("complete", False) for p in pools)
        s = scores.get(v, {})
        spread = [f"{np.mean([r[k] for r in rows if r.get(k) is not None]):.3f}"
                  if any(r.get(k) is not None for r in rows) else "-" for k in ("gate2_cv", "gate3_cv")]
        secs = np.mean([r["seconds"] for r in rows]) if rows else float("nan")
        mark = " (adopted)" if v in adopted else ""
        lines.append(f"| {v}{mark} | {factor} | {what} | {len(sweeps)} | {fmt(s.get('val_auroc'))} | "
                     f"{fmt(s.get('val_bal_acc'))} | {fmt(s.get('score'))} | {fmt(test['auroc_macro'])} | "
                     f"{fmt(test['bal_acc'])} | {fmt(test['sens_normal'], 2)} | {' / '.join(spread)} | {fmt(secs, 0)} |"
                     + ("" if complete else " incomplete"))
    lines += ["", f"Adopted (score >= recipe's + margin): {', '.join(adopted) or 'nothing'}; "
              f"final overrides: `{' '.join(final) or '(experiment=recipe as is)'}`", ""]
    finals = sorted({r["variant"] for r in results if r["stage"] == "final"})
    if finals:
        lines += ["## Stage 2: the final recipe", "", "| sweep | OOF test AUROC | OOF test bal. acc | normal sens. | "
                  "mean val AUROC | mean s / run |", "|---|---|---|---|---|---|"]
        for v in finals:
            p = pooled(out / v)
            rows = [r for r in results if r["variant"] == v]
            lines.append(f"| {v} | {fmt(p.get('auroc_macro'))} | {fmt(p.get('bal_acc'))} | {fmt(p.get('sens_normal'), 2)} | "
                         f"{fmt(np.mean([r['val_auroc'] for r in rows if r.get('val_auroc') is not None]) if rows else None)} | "
                         f"{fmt(np.mean([r['seconds'] for r in rows]), 0)} |" + ("" if p.get("complete") else " incomplete"))
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="*", help="overrides for every run: the data (and trainer) to use")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds; no run starts after it")
    parser.add_argument("--stop", type=float, default=float("inf"),
                        help="seconds; runs still going then are killed and the summary is written")
    parser.add_argument("--phantom", default="",
                        help="data overrides (space-separated) of the phantom: stage 2 also trains the final "
                             "recipe on it")
    parser.add_argument("--base", default=STARTING_GUESS,
                        help="overrides after experiment=recipe for every run: where stage 1 starts "
                             f"(default: the starting guess, {STARTING_GUESS!r}; '' = the recipe as it is)")
    parser.add_argument("--explore-seeds", default="42", help="seeds of the stage-1 runs")
    parser.add_argument("--reference-score", type=float, default=None,
                        help="the starting point's val score, when it was measured before (no 'recipe' row needed)")
    parser.add_argument("--final-jobs", default="seeds,resnet18,inner,phantom",
                        help="stage-2 runs: seeds (the final recipe per --seeds), resnet18 (gates off), inner "
                             "(fold-ensemble members data.inner_fold=1,2), phantom")
    parser.add_argument("--search", default="", help="more overrides (space-separated) of the policy searches")
    parser.add_argument("--final-after", type=float, default=0.6,
                        help="share of --budget after which stage 2 starts even if stage 1 is unfinished")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="stage-1 variants, in priority order")
    parser.add_argument("--seeds", default="1,2,3", help="stage-2 seeds of the final recipe")
    parser.add_argument("--margin", type=float, default=0.01, help="how much a score must beat the recipe's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (OMP_NUM_THREADS)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    folds = [int(f) for f in args.folds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    start = time.time()
    sched = Scheduler(out, args.jobs, start + args.budget, env)
    command = "python benchmarks/recipe_ablation.py " + " ".join(sys.argv[1:])
    if "aug_policy" in variants:
        for k in folds:
            sched.add(search_job(out, k, args.data, args.search.split()))
    start_overrides = args.base.split()
    explore_seeds = [int(x) for x in args.explore_seeds.split(",")]
    for v in variants:  # variant-major: the first variants complete first
        for seed in explore_seeds:
            for k in folds:
                sched.add(train_job(out, v, VARIANTS[v][1], k, seed, "explore", args.data,
                                    tag=None if seed == 42 else f"{v}_s{seed}", start=start_overrides))
    results: list[dict] = []
    final_started, scores, adopted, final = False, {}, [], []
    with open(out / "results.jsonl", "a") as sink:
        while True:
            for job in sched.poll():
                row = {"run": job.name, "variant": job.variant, "fold": job.fold, "seed": job.seed, "stage": job.stage,
                       "ok": sched.done[job.name], "seconds": round(time.time() - job.started, 1)}
                row |= read_run(out / job.name) or {}
                results.append(row)
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(f"[{time.time() - start:6.0f} s] {job.name}: {'ok' if row['ok'] else 'FAILED'} "
                      f"val {fmt(row.get('val_auroc'))} test {fmt(row.get('test_auroc'))} ({row['seconds']} s)", flush=True)
            explore_left = any(j.stage == "explore" for j in sched.queue + sched.running)
            late = time.time() - start > args.final_after * args.budget
            if not final_started and seeds and (not explore_left or late):
                final_started = True
                scores = variant_scores(results, variants, folds, len(explore_seeds))
                adopted, final = select(scores, args.margin, args.reference_score)
                print(f"selection on inner validation: adopted {adopted or 'nothing'}", flush=True)
                (out / "selection.json").write_text(json.dumps({"scores": scores, "adopted": adopted,
                                                                "final_overrides": final, "margin": args.margin,
                                                                "reference_score": args.reference_score},
                                                               indent=2))
                final = merge(start_overrides, final)
                kinds = args.final_jobs.split(",")
                gates_off = ["model.net.attention=false", "model.loss.mask_weight=0.0"]  # masks need gates
                jobs = [train_job(out, "final", final, k, s, "final", args.data, tag=f"final_s{s}")
                        for s in seeds for k in folds] if "seeds" in kinds else []
                if "resnet18" in kinds:
                    jobs += [train_job(out, "final", final + gates_off, k, seeds[0], "final", args.data,
                                       tag=f"final_resnet18_s{seeds[0]}") for k in folds]
                if "inner" in kinds:
                    jobs += [train_job(out, "final", final + [f"data.inner_fold={j}"], k, seeds[0], "final", args.data,
                                       tag=f"final_inner{j}_s{seeds[0]}") for j in (1, 2) for k in folds]
                phantom = args.phantom.split()
                if phantom and "phantom" in kinds:
                    jobs += [train_job(out, "final", final, k, seeds[0], "final", phantom, tag=f"phantom_final_s{seeds[0]}")
                             for k in folds]
                sched.queue = [j for j in sched.queue if j.stage == "final"] + jobs + [j for j in sched.queue if j.stage != "final"]
            if not sched.running and (not sched.queue or time.time() > sched.deadline):
                break
            if time.time() - start > args.stop:
                print(f"stop after {args.stop:.0f} s: killing {len(sched.running)} run(s)", flush=True)
                sched.kill_all()
                break
            time.sleep(1.0)
    if not scores:
        scores = variant_scores(results, variants, folds, len(explore_seeds))
    write_summary(out, results, scores, adopted, final, command)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
