"""Hydra callbacks for cross-validation sweeps (``python -m skintumor.train -m data.fold=0,1,2,3,4``).

- :class:`CrossValidationReport` writes the out-of-fold report into the sweep directory when the
  multirun ends (configured in ``conf/hydra/default.yaml``); for an ensemble sweep, each member's and
  the ensemble's. Folds explained in training (``explain.enabled``) are pooled into the report first.
- :class:`OneDevicePerJob` gives each parallel job its own GPU (or its share of the CPU threads);
  it acts only when the launcher runs several jobs at once (``hydra/launcher=parallel``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from skintumor.rundir import failed_since, keep_aside


class CrossValidationReport(Callback):
    """After a multirun whose job directories are ``fold_<k>``, run :func:`build_report` on the sweep.

    Ensemble sweeps (job directories ``<member>/fold_<k>``, e.g. ``member_${seed}/fold_${data.fold}``
    in ``experiment=recipe_ensemble``): each member is reported, then the members' mean
    probabilities are written to ``<sweep>/ensemble`` (:func:`ensemble_sweeps`) and reported there.
    A report failure is printed, never raised: the trained folds stay valid. If a fold fails, Hydra
    stops before this hook; ``make cv`` then runs ``python -m skintumor.report`` itself.

    When folds have explanations (``fold_<k>/explain/``, ``explain.enabled=true``), they are pooled
    first (:func:`skintumor.explain.pooled.pool_explanations`: ``<sweep>/explain/``, galleries in
    ``figures/``) and the report gets the pooled section; a pooling failure is printed and the report
    is written without it.
    """

    def __init__(self, n_boot: int = 2000, seed: int = 0):
        self.n_boot, self.seed = int(n_boot), int(seed)
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Keep the ``multirun.yaml`` of an earlier launch into this sweep (as ``multirun_<time>.yaml``):
        Hydra writes its own over it next."""
        self.started = time.time()
        # resolve ${now:...} in sweep_name once, here: Hydra hands this cache to every job, so all folds share
        # one name (their W&B group) even when hydra.sweep.dir is given and never resolves it
        OmegaConf.select(config, "sweep_name")
        keep_aside(Path(str(config.hydra.sweep.dir)) / "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.write_report(config)
        from skintumor.dashboard import log_sweep_summary  # W&B: the report as the sweep's summary run (never raises)

        log_sweep_summary(Path(str(config.hydra.sweep.dir)))
        failed = failed_since(Path(str(config.hydra.sweep.dir)), self.started)
        if failed:  # after the report: a failed fold costs only that fold
            console = Console(stderr=True)
            for job, line in failed.items():
                console.print(f"[bold red]{job} failed:[/] {line}", soft_wrap=True, highlight=False)
            console.print(
                f"{len(failed)} job(s) failed; the same command again retries them (finished folds are skipped, "
                "interrupted ones resume)",
                soft_wrap=True,
            )
            sys.exit(1)  # SystemExit passes Hydra's callback guard: the command's exit status says it

    def write_report(self, config: DictConfig) -> None:
        """The sweep's report (and each member's, for an ensemble sweep)."""
        subdir = str(config.hydra.sweep.subdir)
        members = "/" in subdir and Path(subdir).name.startswith("fold_")
        if not (subdir.startswith("fold_") or members):
            return  # not a sweep over folds
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not any(sweep_dir.glob("**/fold_*/predictions_test.csv")):
            return  # folds that trained nothing to report, e.g. `python -m skintumor.search -m` (policy files)
        console = Console()
        try:
            from skintumor.evaluate.report import build_report

            if not members:
                sections = explanation_sections(sweep_dir, console)
                build_report(sweep_dir, n_boot=self.n_boot, seed=self.seed, console=console, sections=sections)
                console.print(f"cross-validation report: {sweep_dir / 'report.html'}", soft_wrap=True)
                return
            from skintumor.evaluate.ensemble import ensemble_sweeps

            member_dirs = sorted(d for d in sweep_dir.iterdir() if d.is_dir() and any(d.glob("fold_*")))
            for d in member_dirs:
                sections = explanation_sections(d, console)
                build_report(d, n_boot=self.n_boot, seed=self.seed, console=console, sections=sections)
            if len(member_dirs) > 1:  # one member (e.g. seed=1 on the command line) has its report already
                out = ensemble_sweeps(member_dirs, sweep_dir / "ensemble")
                build_report(out, n_boot=self.n_boot, seed=self.seed, console=console)
                console.print(
                    f"cross-validation report of the {len(member_dirs)} members' ensemble: {out / 'report.html'}",
                    soft_wrap=True,
                )
        except Exception as err:  # noqa: BLE001 - the sweep's results must survive a report bug
            console.print(
                f"[bold red]report not written:[/] {err} (retry: python -m skintumor.report {sweep_dir})",
                soft_wrap=True,
            )


def explanation_sections(sweep_dir: Path, console: Console) -> list:
    """The report sections of a sweep's explained folds (pooled over them): [] when none is explained
    or the pooling fails (printed; the report is written without it)."""
    try:
        from skintumor.explain.pooled import pool_explanations

        section = pool_explanations(sweep_dir)
    except Exception as err:  # noqa: BLE001 - the report must not depend on the explanations
        console.print(f"[bold red]explanations not pooled:[/] {err}", soft_wrap=True)
        return []
    if section is not None:
        console.print(f"explanations pooled over the folds: {sweep_dir / 'explain' / 'agreement.md'}", soft_wrap=True)
    return [section] if section is not None else []


class OneDevicePerJob(Callback):
    """Pin every parallel job (joblib worker process) to one GPU, or to its share of CPU threads.

    GPU: ``CUDA_VISIBLE_DEVICES`` = job number modulo the number of GPUs, set at the first job a
    worker runs (before CUDA starts); the worker keeps that GPU for its later jobs, so with
    ``n_jobs`` = number of GPUs each GPU trains one fold at a time. Without GPUs: torch threads =
    CPU cores // ``n_jobs``, so parallel folds do not fight over the cores.
    """

    def __init__(self, n_jobs: int = 1):
        n_jobs = int(n_jobs)
        self.n_jobs = n_jobs if n_jobs > 0 else (os.cpu_count() or 1)  # joblib: -1 = one per core

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if self.n_jobs == 1:
            return  # sequential jobs (and single runs, DDP included) keep every device
        gpus = visible_gpus()
        if len(gpus) > 1 and "SKINTUMOR_PINNED_GPU" not in os.environ:
            gpu = gpus[int(config.hydra.job.num) % len(gpus)]
            os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["SKINTUMOR_PINNED_GPU"] = gpu
        elif not gpus:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.n_jobs))


def visible_gpus() -> list[str]:
    """GPU ids this process may use, found without starting CUDA (which would freeze the choice):
    ``CUDA_VISIBLE_DEVICES`` if set, else the NVIDIA driver's list (Linux)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(len(list(Path("/proc/driver/nvidia/gpus").glob("*"))))]


__all__ = ["CrossValidationReport", "OneDevicePerJob", "explanation_sections", "visible_gpus"]
