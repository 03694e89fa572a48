"""What reaches the W&B dashboard: per fold plots, tables and artifacts, a summary run per sweep.

Every training run (a fold; in an ensemble sweep ``fold_<k>/seed_<s>``) is one W&B run, grouped by
its sweep; docs/wandb.md shows what appears where. The pieces, and who calls them:

- :func:`wandb_logger` (conf/logger/wandb.yaml): a :class:`SafeWandbLogger` for Lightning; it logs
  the resolved configuration once, every epoch's train/val curves, and never the re-validation of
  the chosen checkpoint a second time;
- :func:`log_fold` (train.py, after the test and the explanations): the run's summary (the tested
  checkpoint's numbers, the best validation value), the test fold's confusion matrix, ROC curves and
  predictions table, the CAM overlays, and the artifacts: the data manifest (a ``dataset`` the run
  uses), the augmentation policy file (when trained with one), the tested checkpoint (``model``);
- :func:`log_sweep_summary` (hydra_callbacks.CrossValidationReport, ``python -m skintumor.report``):
  one ``summary`` run per sweep: pooled metrics with CIs, the per-fold table, every report figure, the
  report files as an artifact;
- :func:`log_comparison` (``python -m skintumor.report A B``) and :func:`log_bundle` (``skintumor
  export``): a ``compare`` run with the comparison tables, an ``export`` run whose bundle artifact
  uses the folds' model artifacts;
- :func:`sync_sweep` (``make sync SWEEP=...``, ``python -m skintumor.dashboard SWEEP``): uploads a
  sweep's offline runs, the training runs first.

Nothing here stops a run: a W&B failure is a warning, and the CSV logger and every file on disk go
on. Offline runs work fully (``WANDB_MODE=offline``, the default without a login): each fold writes
``<run>/wandb/skintumor_fold.json`` (its project, group, mode and artifacts), from which the later
runs join the same project and group and name the folds' artifacts without a server.

Homes: :mod:`~skintumor.dashboard.fold` (a training run: its files, records and artifacts),
:mod:`~skintumor.dashboard.summary` (the runs after the folds: summary, comparison, export) and
:mod:`~skintumor.dashboard.sync` (``python -m skintumor.dashboard``).
"""

from skintumor.dashboard.fold import FOLD_RECORD, log_fold, log_run_files
from skintumor.dashboard.summary import log_bundle, log_comparison, log_sweep_summary
from skintumor.dashboard.sync import main, offline_runs, sync_sweep

__all__ = [
    "FOLD_RECORD",
    "log_fold",
    "log_run_files",
    "log_sweep_summary",
    "log_comparison",
    "log_bundle",
    "offline_runs",
    "sync_sweep",
    "main",
]
