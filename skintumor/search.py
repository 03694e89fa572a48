"""Learn an augmentation policy for one outer fold: ``python -m skintumor.search [overrides]``.

A thin Hydra entry point (same data/model config groups as training) around
:func:`skintumor.augment.search.search_policy`. Examples:

    python -m skintumor.search data=folder data.root=~/scans data.fold=0
    python -m skintumor.search -m data.fold=0,1,2,3,4                # a policy per outer fold
    python -m skintumor.search search.trials=20 search.storage=sqlite:///search.db   # resumable
    python -m skintumor.train augment=policy augment.path=outputs/search/runs/<time>/policy_fold0.json
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from skintumor.augment.search import SearchSettings, search_policy
from skintumor.cli import one_line_user_errors
from skintumor.data.folds import PatientGroupedFolds
from skintumor.errors import DataError, PolicyError


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> None:
    with one_line_user_errors():  # bad data or policy path: one clear line, no traceback
        run_search(cfg)


def run_search(cfg: DictConfig) -> Path:
    """Search outer fold ``cfg.data.fold`` and write its policy file; returns the file's path."""
    fold = int(cfg.data.fold)
    out = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / f"policy_fold{fold}.json"
    if out.exists():
        raise PolicyError(f"{out}: already exists; policies are never overwritten")
    if cfg.data.get("nested"):  # the search splits the whole outer training part, stand-in included
        raise PolicyError(
            "data.nested=true judges training recipes on a stand-in test fold; the policy search "
            "does not honour it and would see the stand-in: run the search without data.nested"
        )
    L.seed_everything(cfg.seed, workers=True)

    # the training's own data path (data check, crop, near-duplicate groups, resize), so the folds and
    # pixels are exactly the training's; the search itself only ever asks for the fold's training part
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    manifest = datamodule.manifest
    folds = PatientGroupedFolds(
        manifest.labels, manifest.groups, cfg.data.n_folds, cfg.data.val_fraction, cfg.data.seed, manifest.classes
    )

    def load_images(indices):
        return [datamodule.images[i] for i in indices]

    def make_child(class_counts):
        module = hydra.utils.instantiate(
            cfg.model,
            classes=manifest.classes,
            class_counts=class_counts,
            image_size=cfg.data.image_size,
            mean=cfg.data.mean,
            std=cfg.data.std,
            _convert_="all",
        )
        return module, module.criterion

    options = OmegaConf.to_container(cfg.search, resolve=True)
    try:
        settings = SearchSettings(**options, seed=cfg.seed, mean=cfg.data.mean, std=cfg.data.std)
    except (TypeError, ValueError) as err:
        raise DataError(f"search settings: {err}") from None
    policy, results = search_policy(load_images, manifest.labels, folds, fold, make_child, settings)
    policy.search |= {
        "source": cfg.data.source,
        "root": str(cfg.data.root),
        "image_size": cfg.data.image_size,
        "model": OmegaConf.to_container(cfg.model.net, resolve=True),
    }
    policy.save(out)
    _summary(results, out, settings.objective)
    return out


def _summary(results, out: Path, objective: str) -> None:
    table = Table(title=f"policy search ({objective}, higher is better)")
    for col in ("inner", "train/val groups", "clean", "best", "trials (pruned)", "child s", "trials s"):
        table.add_column(col)
    for r in results:
        table.add_row(
            str(r.inner),
            f"{r.train_groups}/{r.val_groups}",
            f"{r.clean_score:.3f}",
            f"{r.top[0][1]:.3f}" if r.top else "-",
            f"{r.trials_done} ({r.pruned})",
            f"{r.child_seconds:.0f}",
            f"{r.trial_seconds:.0f}",
        )
    console = Console()
    console.print(table)
    console.print(f"policy written to [bold]{out}[/]")


if __name__ == "__main__":
    # the importable module's main, not __main__'s: parallel launchers (joblib, submitit) pickle the task
    # function, by reference only when its module can be imported (by value, __main__'s drags in torch)
    from skintumor.search import main as importable_main

    importable_main()
