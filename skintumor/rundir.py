"""Run directories: each run gets its own, a re-run continues it, and nothing in one is ever replaced.

A run directory goes through three states, read from its files (:func:`run_state`):

- ``new``: nothing of a run in it yet (Hydra's ``.hydra/`` and ``train.log`` at most);
- ``interrupted``: it holds ``run.yaml`` (the resolved settings the run started with, written once) but
  no test metrics; training continues from ``checkpoints/last.ckpt`` if there is one, else starts over;
- ``finished``: ``metrics_test.json`` (``metrics_val.json`` for ``test=false``) is there; a re-run skips it.

So re-running a killed cross-validation (the same command) skips finished folds, resumes interrupted ones
and starts the others. A directory holding anything else (a data folder, another program's output) is
refused before anything is written, and a run resumes only into the directory its checkpoint came from,
with the settings it started with. :func:`claim_run_dir` (the ``${unique_dir:...}`` resolver of
``conf/hydra/default.yaml``) gives two runs started in the same second two directories.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from skintumor.errors import DataError

log = logging.getLogger(__name__)

RUN_SETTINGS = "run.yaml"
ERROR_FILE = "error.txt"
HYDRA_FILES = {".hydra", "train.log"}  # what Hydra writes into a run directory before the run starts
# settings that make a run what it is: a resume with other values would mix two runs in one directory
IDENTITY_KEYS = ("data", "augment", "model", "seed", "test_checkpoint")

_claimed: dict[str, str] = {}


def claim_run_dir(base: str) -> str:
    """``base``, or ``base_2``, ``base_3``... : the first name no other run holds, created atomically
    (``os.mkdir`` fails when another process made it first). Asked twice in one process, the same
    answer (Hydra resolves ``hydra.run.dir`` more than once)."""
    if base in _claimed:
        return _claimed[base]
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else f"{base}_{n}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        _claimed[base] = path
        return path
    raise DataError(f"{base}: 10000 runs of that name already exist")


def register_resolvers() -> None:
    """``${unique_dir:PATH}`` for the Hydra configs (:func:`claim_run_dir`)."""
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", claim_run_dir)


@dataclass(frozen=True)
class RunStart:
    """How a run begins in its directory: ``state`` (new, interrupted, finished) and the checkpoint
    it resumes from ("" when it starts from scratch)."""

    state: str
    resume_from: str = ""


def run_state(out: Path, test: bool = True) -> str:
    """``new``, ``interrupted`` or ``finished`` (see the module docstring)."""
    if (out / ("metrics_test.json" if test else "metrics_val.json")).is_file():
        return "finished"
    return "interrupted" if (out / RUN_SETTINGS).is_file() else "new"


def run_start(cfg: DictConfig, out: Path) -> RunStart:
    """How the run begins in ``out``; writes nothing.

    Raises DataError for a directory that holds files of no run, for a ``ckpt_path`` outside this run's
    ``checkpoints/`` (or not a readable checkpoint), and for a resume with other settings than the run
    started with."""
    state = run_state(out, bool(cfg.get("test", True)))
    ckpt = str(cfg.get("ckpt_path") or "")
    if state == "finished":
        return RunStart("finished")
    if state == "new":
        foreign = sorted(p.name for p in out.iterdir() if not _left_by_runs(p.name)) if out.is_dir() else []
        if foreign:
            shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
            raise DataError(
                f"{out}: not a run directory (it holds {shown}); a run writes only into a new directory "
                "or its own: choose another hydra.run.dir"
            )
        if ckpt:
            raise DataError(
                f"ckpt_path={ckpt}: a run resumes only into the directory its checkpoint came from; "
                "set hydra.run.dir to that run (the directory above checkpoints/)"
            )
        return RunStart("new")
    check_same_settings(cfg, out)
    checkpoints = out / "checkpoints"
    if ckpt:
        if Path(ckpt).resolve().parent != checkpoints.resolve():
            raise DataError(
                f"ckpt_path={ckpt}: not a checkpoint of the run in {out}; a run resumes only into the directory "
                "its checkpoint came from"
            )
    elif (checkpoints / "last.ckpt").is_file():
        ckpt = str(checkpoints / "last.ckpt")
    elif any(checkpoints.glob("*.ckpt")):
        raise DataError(
            f"{out}: interrupted run without checkpoints/last.ckpt (callbacks.last_checkpoint was off); "
            "its epochs cannot be resumed: start it in a new directory"
        )
    if ckpt:
        check_checkpoint(ckpt)
        log.info("resuming the interrupted run in %s from %s", out, ckpt)
    else:
        log.info("starting the run in %s again: it was stopped before its first checkpoint", out)
    return RunStart("interrupted", ckpt)


def _left_by_runs(name: str) -> bool:
    """Hydra's files, and the error files of earlier attempts that failed before they started."""
    return name in HYDRA_FILES or (name.startswith("error") and name.endswith(".txt"))


def mark_started(cfg: DictConfig, out: Path, start: RunStart) -> None:
    """Write ``run.yaml`` into a new run's directory: from now on it is this run's."""
    if start.state == "new":
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(identity(cfg), out / RUN_SETTINGS)


def identity(cfg: DictConfig) -> DictConfig:
    """The settings that make the run what it is (:data:`IDENTITY_KEYS`), resolved."""

    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    return OmegaConf.create({k: plain(cfg.get(k)) for k in IDENTITY_KEYS})


def check_same_settings(cfg: DictConfig, out: Path) -> None:
    """Refuse to continue the run in ``out`` with settings other than the ones it started with."""
    before = OmegaConf.to_container(OmegaConf.load(out / RUN_SETTINGS))
    now = OmegaConf.to_container(identity(cfg))
    changed = sorted(_differences(before, now))
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise DataError(
            f"{out}: this run started with other settings ({shown} differ from its {RUN_SETTINGS}); "
            "continue it with its own settings, or start the new ones in a new directory"
        )


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def check_checkpoint(path: str | Path) -> None:
    """A readable Lightning training checkpoint (tensors and plain data only), or one DataError line."""
    from skintumor.models.checkpoint import read_checkpoint  # torch only when a run resumes

    data = read_checkpoint(path)
    missing = [k for k in ("state_dict", "epoch", "loops") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path}: not a Lightning training checkpoint (no {', '.join(missing)})")


def record_failure(out: Path, err: BaseException) -> str:
    """Write ``error.txt`` (the one-line reason, then the traceback) into a failed fold's directory and
    return the line; the sweep goes on and its report names the fold."""
    line = f"{type(err).__name__}: {err}".splitlines()[0]
    out.mkdir(parents=True, exist_ok=True)
    clear_failure(out)
    text = line + "\n\n" + "".join(traceback.format_exception(err))
    (out / ERROR_FILE).write_text(text)
    return line


def clear_failure(out: Path) -> None:
    """Rename a previous attempt's ``error.txt`` (kept as ``error_<time>.txt``) before a new attempt."""
    keep_aside(out / ERROR_FILE)


def keep_aside(path: Path) -> None:
    """Rename ``path`` (if it exists) to ``<stem>_<its time><suffix>`` beside it, so that writing a new
    file of its name loses nothing."""
    if path.is_file():
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(path.stat().st_mtime))
        path.rename(path.with_name(f"{path.stem}_{stamp}{path.suffix}"))


def failed_since(sweep_dir: Path, since: float) -> dict[str, str]:
    """Job directories of a sweep whose run failed after ``since`` (epoch seconds) -> the one-line reason."""
    failed = {}
    for error in sorted(sweep_dir.glob(f"**/{ERROR_FILE}")):
        if error.stat().st_mtime >= since:
            failed[str(error.parent.relative_to(sweep_dir))] = error.read_text().splitlines()[0]
    return failed


def discard_unstarted(out: Path, since: float) -> None:
    """Remove what a run that failed before it started left behind (Hydra's ``.hydra/`` and ``train.log``
    written since ``since``), and the directory if that leaves it empty. A run that started
    (``run.yaml``) keeps everything."""
    if not out.is_dir() or (out / RUN_SETTINGS).exists():
        return
    for name in HYDRA_FILES:
        path = out / name
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        if path.exists() and all(p.stat().st_mtime >= since - 1 for p in files):
            for handler in logging.getLogger().handlers:  # Hydra's file handler holds train.log open
                if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.resolve():
                    handler.close()
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not any(out.iterdir()):
        out.rmdir()
