"""Experiment loggers for Lightning that work with no account and no network.

- :class:`ResumableCSVLogger` (conf/logger/csv.yaml): ``<run>/csv/metrics.csv``, kept whole when a
  run resumes;
- :func:`wandb_logger` (conf/logger/wandb.yaml): a :class:`SafeWandbLogger`; it logs the resolved
  configuration once, every epoch's train/val curves, and never the re-validation of the chosen
  checkpoint a second time. A W&B failure is a warning: the run goes on with the CSV logger.

What else reaches the W&B dashboard (plots, tables, artifacts, the sweep's summary run) is
:mod:`skintumor.dashboard`.
"""

from __future__ import annotations

import csv
import functools
import logging
import netrc
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

RUN_ID = "skintumor_run_id"  # <run>/wandb/<this>: the W&B run id, so that a resumed training run continues it
_STARTED: list[Any] = []  # runs this module started: a fold that ended without finishing its run leaves it here


def wandb_mode(mode: str = "auto") -> str:
    """ "auto" -> WANDB_MODE if set, "online" when logged in (API key or ~/.netrc), else "offline"."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def warn(what: str, err: BaseException) -> None:
    """The one message of a W&B failure: what was not logged and why; nothing else stops."""
    log.warning(
        "W&B: %s failed (%s: %s); going on without it (the CSV logger and the run's files are unaffected)",
        what,
        type(err).__name__,
        str(err).splitlines()[0] if str(err) else "",
    )


def never_raises(what: str):
    """Decorator: a W&B failure inside the function is a :func:`warn`, and it returns None."""

    def wrap(function):
        @functools.wraps(function)
        def safe(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - logging must never break training or a report
                warn(what, err)
                return None

        return safe

    return wrap


class _Noop:
    """Stands in for a W&B run that could not start: every attribute and call does nothing."""

    def __getattr__(self, name: str) -> _Noop:
        return self

    def __call__(self, *args, **kwargs) -> _Noop:
        return self


def config_tags(cfg: Mapping) -> list[str]:
    """Tags of a resolved training config: the experiment (``task_name``), the data source and the
    network (``attention_resnet18`` or ``resnet18``)."""
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    net = model.get("net") if isinstance(model, Mapping) else None
    tags = [cfg.get("task_name"), data.get("source") if isinstance(data, Mapping) else None]
    if isinstance(net, Mapping):
        tags.append("attention_resnet18" if net.get("attention") else "resnet18")
    return [str(t) for t in tags if t]


class SafeWandbLogger(WandbLogger):
    """Lightning's WandbLogger, made safe for a study:

    - a W&B failure (no network, a bad key, a full disk) is one warning; the logger then does
      nothing and training goes on with the other loggers;
    - the configuration is logged once: the first ``log_hyperparams`` (train.py's resolved config,
      nested); Lightning's later call with the module's hyper-parameters (``model.*`` again, flat)
      is skipped. The config's experiment, data source and network become tags;
    - ``val/*`` is logged while fitting (every epoch's curve), not again when train.py re-validates
      the chosen checkpoint after fitting (``trainer.validate``; its numbers go to the run's summary,
      :func:`log_fold`). A logger that never saw a fit logs ``trainer.validate`` as usual;
    - ``log_model``: whether :func:`log_fold` logs the tested checkpoint as a model artifact (Lightning's
      own checkpoint upload stays off); ``max_images``: at most this many misclassified thumbnails
      and CAM overlays.
    """

    def __init__(self, *args, log_model: bool = True, max_images: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # W&B warns that the setting is gone
        self.log_tested_model = bool(log_model)
        self.max_images = max(0, int(max_images))
        self.failed = False
        self._config_logged = False
        self._validated_in_fit = False
        self._module = None  # weakref to the LightningModule (log_graph): its trainer says whether it is fitting

    def _fail(self, what: str, err: BaseException) -> None:
        if not self.failed:
            warn(what, err)
        self.failed = True

    @property
    def experiment(self):
        if self.failed:
            return _Noop()
        try:
            if self._experiment is None:
                finish_stale_runs()
            run = WandbLogger.experiment.fget(self)
            if self._experiment is not None and self._experiment not in _STARTED:
                _STARTED.append(self._experiment)
                if self._save_dir and getattr(self._experiment, "id", None):  # a resumed run continues this W&B run
                    _write_text(Path(self._save_dir) / "wandb" / RUN_ID, str(self._experiment.id))
            return run
        except Exception as err:  # noqa: BLE001 - training goes on without W&B
            self._fail("starting the run", err)
            return _Noop()

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        if self._config_logged or self.failed:
            return
        self._config_logged = True
        if isinstance(params, Mapping) and self._experiment is None:
            tags = [*(self._wandb_init.get("tags") or []), *config_tags(params)]
            self._wandb_init["tags"] = list(dict.fromkeys(tags))
        try:
            super().log_hyperparams(params)
        except Exception as err:  # noqa: BLE001
            self._fail("logging the configuration", err)

    def log_graph(self, model, input_array=None) -> None:
        self._module = weakref.ref(model)  # Lightning calls this as each fit, validate or test starts
        super().log_graph(model, input_array)

    def _fitting(self) -> bool | None:
        """Whether the module's trainer is fitting; None when unknown."""
        module = self._module() if self._module is not None else None
        fn = getattr(getattr(getattr(module, "_trainer", None), "state", None), "fn", None)
        return None if fn is None else fn == "fit"

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.failed:
            return
        val = [k for k in metrics if k.startswith("val/")]
        if val:
            fitting = self._fitting()
            self._validated_in_fit |= bool(fitting)
            if fitting is False and self._validated_in_fit:  # the chosen checkpoint re-validated after fit:
                metrics = {k: v for k, v in metrics.items() if k not in val and k != "epoch"}  # in the summary
                if not metrics:
                    return
        try:
            super().log_metrics(metrics, step)
        except Exception as err:  # noqa: BLE001
            self._fail("logging metrics", err)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.failed:
            return
        try:
            super().finalize(status)
        except Exception as err:  # noqa: BLE001
            self._fail("finishing the run", err)


def wandb_logger(
    save_dir: str,
    project: str = "skintumor",
    mode: str = "auto",
    name: str | None = None,
    log_model: bool = True,
    max_images: int = 32,
    **kwargs,
) -> SafeWandbLogger:
    """A :class:`SafeWandbLogger` whose files live inside the run directory (``<save_dir>/wandb``).

    A run directory inside an ensemble member's folder (``member_<seed>/fold_<k>``) gets
    ``/seed_<seed>`` after its ``name``, so the members of a fold have different names. A run
    directory that resumes (its ``wandb/skintumor_run_id`` exists) continues its W&B run."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run_id = Path(save_dir) / "wandb" / RUN_ID
    if run_id.is_file() and not (kwargs.get("id") or kwargs.get("version")):
        kwargs["id"] = run_id.read_text().strip()  # the run directory resumes: so does its W&B run
    member = Path(save_dir).resolve().parent.name
    if name and member.startswith("member_"):
        name = f"{name}/seed_{member.removeprefix('member_')}"
    return SafeWandbLogger(
        save_dir=save_dir,
        project=project,
        mode=wandb_mode(mode),
        name=name,
        log_model=log_model,
        max_images=max_images,
        **kwargs,
    )


def finish_run(logger: SafeWandbLogger) -> None:
    """End the logger's W&B run (a failure is a warning)."""
    try:
        logger.experiment.finish()
    except Exception as err:  # noqa: BLE001
        warn("finishing the run", err)
    if logger._experiment in _STARTED:
        _STARTED.remove(logger._experiment)


def finish_stale_runs() -> None:
    """Finish a run this module started that is still open (a fold that failed before its end), so
    that the next fold in this process starts its own run instead of writing into it."""
    import wandb

    while _STARTED:
        run = _STARTED.pop()
        if wandb.run is run:
            run.finish()


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted (Lightning
    empties it when a run resumes into its own directory): every row logged before a stop is kept, and
    the header grows when new columns appear."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume (:class:`_AppendingWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
