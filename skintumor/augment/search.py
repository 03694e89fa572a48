"""Fast AutoAugment (Lim et al. 2019) inside one outer training fold, leak-free.

Protocol, for outer fold ``k``:

1. Split the fold's training part into K patient-grouped, stratified inner folds
   (:meth:`PatientGroupedFolds.inner_folds`); only those rows are ever requested from the loader.
2. On each inner training split, train a child model without augmentation (a few epochs).
3. Density matching: a candidate policy is good if the child, trained on clean images, still finds
   the inner validation images likely after the policy has augmented them. Score = mean
   log-likelihood of the true class, ``log_softmax(logits)[y]`` (softmax once), or accuracy.
4. Optuna's multivariate TPE (seeded) proposes ``trials`` candidate policies per inner fold. The
   validation images are scored in chunks (a fixed shuffled order); a candidate whose running score is
   not among the best ``prune_percentile`` % of earlier candidates at the same point is stopped
   (optuna's PercentilePruner): it could not have made the top ``top_n`` anyway, and most of a
   search's cost is scoring.
5. Keep the ``top_n`` candidates per inner fold and merge their sub-policies into one policy.

Images are decoded once (only the fold's training part) and augmented in memory per trial; the
child is evaluated in large no-grad batches. Plain module: no Hydra; ``skintumor.search`` is the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from skintumor.augment.ops import DEFAULT_OPS, OPS
from skintumor.augment.policy import Policy, Step
from skintumor.data.folds import PatientGroupedFolds

# (class_counts of the inner training split) -> (model: (B,1,H,W) float -> (B,C) logits, loss_fn(logits, y))
ChildFactory = Callable[[list[int]], tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]
# (row indices into the manifest) -> decoded HxW uint8 images, all the same size
ImageLoader = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass
class SearchSettings:
    """Knobs of the search; the defaults are the study's protocol where it has one."""

    n_inner: int = 4  # inner folds (study: 4)
    trials: int = 100  # TPE trials per inner fold (study: 100)
    subpolicies: int = 5  # sub-policies per candidate policy (FAA's num_policy)
    ops_per_subpolicy: int = 2  # (study: 2)
    top_n: int = 5  # candidates kept per inner fold (study: 5)
    ops: tuple[str, ...] | None = DEFAULT_OPS  # None: every B-mode-safe op
    objective: str = "loglik"  # loglik | accuracy
    child_epochs: int = 3  # short: keeps the search cheaper than the final training
    child_lr: float = 1e-3
    batch_size: int = 32
    eval_batch_size: int = 128
    prune: bool = True  # stop hopeless candidates early (PercentilePruner)
    prune_percentile: float = 25.0  # keep a candidate while it is in the best 25 % at each chunk
    eval_chunks: int = 8  # validation scored in this many chunks (pruning points)
    seed: int = 0
    storage: str | None = None  # e.g. "sqlite:///search.db": an interrupted search resumes
    mean: float = 0.449  # the data module's normalisation of [0, 1] images
    std: float = 0.226
    device: str = "cpu"  # where the child trains and scores: cpu | cuda | auto

    def __post_init__(self) -> None:
        self.ops = tuple(self.ops) if self.ops else DEFAULT_OPS
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown op(s) in the search space: {', '.join(unknown)} (known: {', '.join(OPS)})")
        if self.objective not in ("loglik", "accuracy"):
            raise ValueError(f"objective must be 'loglik' or 'accuracy', got {self.objective!r}")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.top_n > self.trials:
            raise ValueError(f"top_n ({self.top_n}) cannot exceed trials ({self.trials})")


@dataclass
class InnerResult:
    """What one inner fold contributed: its best candidates and how they scored."""

    inner: int
    train_groups: int
    val_groups: int
    train_images: int
    val_images: int
    clean_score: float  # the child on un-augmented validation images
    top: list[tuple[int, float]] = field(default_factory=list)  # (trial number, score), best first
    policies: list[Policy] = field(default_factory=list)
    trials_done: int = 0
    pruned: int = 0
    child_seconds: float = 0.0
    trial_seconds: float = 0.0


def normalise(images: Sequence[np.ndarray], mean: float, std: float) -> torch.Tensor:
    """N HxW uint8 images -> (N, 1, H, W) float tensor, as the data module feeds the network."""
    x = torch.from_numpy(np.stack(images)).float().div_(255.0)
    return ((x - mean) / std).unsqueeze(1)


def train_child(
    model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int, seed: int
) -> nn.Module:
    """A short plain Adam loop on clean images; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            if len(batch) < 2:  # BatchNorm cannot train on one image
                continue
            loss = loss_fn(model(x[batch].to(device)), y[batch].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.inference_mode()
def sample_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image log-likelihood of the true class and correctness: two arrays of shape (N,)."""
    loglik, correct = [], []
    device = next(model.parameters()).device
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size].to(device)).float().cpu()
        logp = torch.log_softmax(logits, dim=1)
        target = y[start : start + batch_size]
        loglik.append(logp.gather(1, target[:, None])[:, 0])
        correct.append((logits.argmax(1) == target).float())
    return torch.cat(loglik).numpy(), torch.cat(correct).numpy()


def suggest_policy(trial: optuna.Trial, settings: SearchSettings) -> Policy:
    """One candidate: ``subpolicies`` x ``ops_per_subpolicy`` (op, p, magnitude) from the trial."""
    subs = []
    for i in range(settings.subpolicies):
        subs.append(
            [
                Step(
                    trial.suggest_categorical(f"s{i}_op{j}", list(settings.ops)),
                    trial.suggest_float(f"s{i}_p{j}", 0.0, 1.0),
                    trial.suggest_float(f"s{i}_m{j}", 0.0, 1.0),
                )
                for j in range(settings.ops_per_subpolicy)
            ]
        )
    return Policy(subs, settings.ops_per_subpolicy)


def policy_from_params(params: dict, settings: SearchSettings) -> Policy:
    """Rebuild a candidate from a finished trial's parameters."""
    return Policy(
        [
            [
                Step(params[f"s{i}_op{j}"], params[f"s{i}_p{j}"], params[f"s{i}_m{j}"])
                for j in range(settings.ops_per_subpolicy)
            ]
            for i in range(settings.subpolicies)
        ],
        settings.ops_per_subpolicy,
    )


def search_inner_fold(
    model: nn.Module,
    val_images: Sequence[np.ndarray],
    val_labels: np.ndarray,
    settings: SearchSettings,
    study_name: str,
    seed: int,
    on_trial: Callable[[], None] | None = None,
) -> optuna.Study:
    """Run TPE trials that score candidate policies on the augmented validation images."""
    y = torch.as_tensor(val_labels, dtype=torch.long)
    order = np.random.default_rng(seed).permutation(len(y))  # every chunk a fair sample of classes
    chunks = np.array_split(order, max(1, min(settings.eval_chunks, len(y))))
    column = 0 if settings.objective == "loglik" else 1

    def objective(trial: optuna.Trial) -> float:
        augment = suggest_policy(trial, settings).augmentation(seed=seed * 100_003 + trial.number)
        seen = []
        for step, chunk in enumerate(chunks):
            x = normalise([augment(image=val_images[i])["image"] for i in chunk], settings.mean, settings.std)
            seen.append(sample_scores(model, x, y[chunk], settings.eval_batch_size)[column])
            score = float(np.concatenate(seen).mean())
            if settings.prune and step < len(chunks) - 1:
                trial.report(score, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return score

    sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=min(10, settings.trials))
    pruner = (
        optuna.pruners.PercentilePruner(
            settings.prune_percentile, n_startup_trials=min(10, settings.trials), n_warmup_steps=0
        )
        if settings.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=settings.storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = settings.trials - len(study.get_trials(deepcopy=False, states=finished))
    if remaining > 0:
        callbacks = [lambda study, trial: on_trial()] if on_trial else None
        study.optimize(objective, n_trials=remaining, callbacks=callbacks, catch=())
    return study


def search_policy(
    load_images: ImageLoader,
    labels: Sequence[int],
    folds: PatientGroupedFolds,
    fold: int,
    make_child: ChildFactory,
    settings: SearchSettings | None = None,
    progress: bool = True,
) -> tuple[Policy, list[InnerResult]]:
    """Learn a policy for outer fold ``fold`` from its training part only.

    Args:
        load_images: decodes the requested manifest rows (called once, with the training part only).
        labels: class index of every manifest row.
        folds: the outer folds; ``folds.inner_folds(fold, n_inner)`` gives the inner splits.
        make_child: builds a fresh child model and its loss for the given class counts.
    Returns:
        The merged policy (with provenance in ``policy.search``) and the per-inner-fold results.
    """
    settings = settings or SearchSettings()
    labels = np.asarray(labels)
    groups = np.asarray(folds.groups)
    inner = folds.inner_folds(fold, settings.n_inner)
    needed = np.unique(np.concatenate([np.concatenate(pair) for pair in inner]))
    images = dict(zip(needed.tolist(), load_images(needed)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    results: list[InnerResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        for j, (train_idx, val_idx) in enumerate(inner):
            task = bar.add_task(f"fold {fold} inner {j}: child", total=settings.trials)
            seed = settings.seed * 1000 + fold * 10 + j
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            model, loss_fn = make_child(np.bincount(labels[train_idx], minlength=labels.max() + 1).tolist())
            model.to(settings.device)
            if hasattr(loss_fn, "to"):
                loss_fn.to(settings.device)
            x_train = normalise([images[i] for i in train_idx], settings.mean, settings.std)
            train_child(
                model,
                loss_fn,
                x_train,
                torch.as_tensor(labels[train_idx]),
                settings.child_epochs,
                settings.child_lr,
                settings.batch_size,
                seed,
            )
            del x_train
            val_images = [images[i] for i in val_idx]
            x_val = normalise(val_images, settings.mean, settings.std)
            clean = sample_scores(model, x_val, torch.as_tensor(labels[val_idx]), settings.eval_batch_size)
            t1 = time.perf_counter()
            bar.update(task, description=f"fold {fold} inner {j}: trials")
            study = search_inner_fold(
                model,
                val_images,
                labels[val_idx],
                settings,
                f"skintumor-fold{fold}-inner{j}-seed{settings.seed}",
                seed,
                on_trial=lambda task=task: bar.advance(task),
            )
            bar.update(task, completed=settings.trials)
            complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            best = sorted(complete, key=lambda t: (-t.value, t.number))[: settings.top_n]
            results.append(
                InnerResult(
                    inner=j,
                    train_groups=len(np.unique(groups[train_idx])),
                    val_groups=len(np.unique(groups[val_idx])),
                    train_images=len(train_idx),
                    val_images=len(val_idx),
                    clean_score=float(clean[0 if settings.objective == "loglik" else 1].mean()),
                    top=[(t.number, float(t.value)) for t in best],
                    policies=[policy_from_params(t.params, settings) for t in best],
                    trials_done=len(study.trials),
                    pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                    child_seconds=t1 - t0,
                    trial_seconds=time.perf_counter() - t1,
                )
            )
            r = results[-1]
            if progress:  # one line per inner fold, also readable in a batch job's log
                bar.console.log(
                    f"fold {fold} inner {j}: child {r.child_seconds:.0f} s, clean {r.clean_score:.3f}; "
                    f"{r.trials_done} trials ({r.pruned} pruned) {r.trial_seconds:.0f} s, "
                    f"best {r.top[0][1] if r.top else float('nan'):.3f}"
                )

    provenance = {
        "method": "Fast AutoAugment density matching (skintumor.augment.search)",
        "fold": fold,
        "n_folds": folds.n_splits,
        "fold_seed": folds.seed,
        "settings": asdict(settings) | {"ops": list(settings.ops)},
        "seconds": round(time.perf_counter() - started, 2),
        "inner_folds": [{k: v for k, v in asdict(r).items() if k != "policies"} for r in results],
    }
    merged = [sub for r in results for p in r.policies for sub in p.subpolicies]
    return Policy(merged, settings.ops_per_subpolicy, provenance), results
