"""Options that need no retraining, judged on validation: more test-time views, and the lesion
decoder's evidence in the decision.

    python benchmarks/eval_options.py outputs/cv/member_a [outputs/cv/member_b ...] [--zoom 96]

For each member sweep and fold, the selected checkpoint scores its validation and test images under
eight views: as is, mirrored (the recipe's ``tta=hflip`` averages these two), zoomed out / in by 10 %
(each also mirrored) and shifted by 6 % of the width either way (border pixels repeated; never a
vertical flip: depth runs down an ultrasound image), and as is and mirrored with the lesion zoom
toggled (``model.net.lesion_zoom``: on at ``--zoom`` px for a model trained without it, off for one
trained with it; this tells a second look at test time from what training with the crops taught).
Its lesion decoder also gives each image's largest lesion probability ``q``. Two families of options
are scored:

- view sets: the probabilities averaged over a set of views;
- decoder evidence: ``w * logit(1 - q)`` added to the normal class's log-probability (the hflip
  probabilities), for a few weights ``w`` (BUSI's normal scans have no lesion to outline).

Scores as in the recipe ablation: val score = (validation macro AUROC + validation balanced
accuracy) / 2, mean over the folds, with class offsets cross-fitted on validation
(``benchmarks/decision_bias.py``); AUROC ranks the probabilities before the offsets. With several
members the rows are also given for their ensemble, as ``python -m skintumor.report --ensemble``
forms it (mean of each member's offset-shifted probabilities). The test columns apply offsets chosen
on the whole validation split; the test folds choose nothing. The checkpoints were chosen with
``tta=hflip``, so the other options are evaluated at the same epoch.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
from ensemble_val import mean_of_members, pooled_cells, pooled_columns, same_split, scored, val_score  # noqa: E402

from skintumor.evaluate.finished_run import FinishedRun  # noqa: E402


def zoom_shift(x: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """(B, 1, H, W) -> the same images zoomed about their centre (scale > 1: in) and shifted
    sideways by ``shift`` of the width; pixels from outside repeat the border."""
    theta = torch.tensor([[1 / scale, 0.0, 2 * shift], [0.0, 1 / scale, 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def mirror(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[-1])


VIEWS = {
    "as is": lambda x: x,
    "mirrored": mirror,
    "zoom 0.9": lambda x: zoom_shift(x, 0.9),
    "zoom 0.9, mirrored": lambda x: mirror(zoom_shift(x, 0.9)),
    "zoom 1.1": lambda x: zoom_shift(x, 1.1),
    "zoom 1.1, mirrored": lambda x: mirror(zoom_shift(x, 1.1)),
    "shift +6 %": lambda x: zoom_shift(x, shift=0.06),
    "shift -6 %": lambda x: zoom_shift(x, shift=-0.06),
}
# computed with the network's lesion zoom switched the other way (zoom_toggled)
TOGGLED = {"lesion zoom toggled": lambda x: x, "lesion zoom toggled, mirrored": mirror}
HFLIP = ["as is", "mirrored"]
VIEW_SETS = {
    "hflip (the recipe)": HFLIP,
    "as is only": ["as is"],
    "hflip + zoom 0.9": HFLIP + ["zoom 0.9", "zoom 0.9, mirrored"],
    "hflip + zoom 1.1": HFLIP + ["zoom 1.1", "zoom 1.1, mirrored"],
    "hflip + zoom 0.9 and 1.1": HFLIP + ["zoom 0.9", "zoom 0.9, mirrored", "zoom 1.1", "zoom 1.1, mirrored"],
    "hflip + shifts": HFLIP + ["shift +6 %", "shift -6 %"],
    "all eight views": list(VIEWS),
    "hflip, lesion zoom toggled": list(TOGGLED),
    "hflip, with and without the lesion zoom": HFLIP + list(TOGGLED),
}
DECODER_WEIGHTS = (0.25, 0.5, 1.0)


@contextlib.contextmanager
def zoom_toggled(net: torch.nn.Module, side: int):
    """The network with its lesion zoom switched: on at ``side`` px if it was off, off if it was on."""
    trained = net.lesion_zoom
    net.lesion_zoom = 0 if trained else side
    try:
        yield net
    finally:
        net.lesion_zoom = trained


@torch.no_grad()
def score_views(run: FinishedRun, part: str, zoom: int = 96) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Labels (N,), per view the softmax probabilities (N, C), and the decoder's largest lesion
    probability per image (N,) of one part of a finished run; ``zoom``: the side of the lesion zoom
    for the toggled views of a model trained without it."""
    net = run.classifier.eval_model()  # FinishedRun opens it in eval mode
    if getattr(net, "lesion_decoder", None) is None:
        raise SystemExit(f"{run.path}: the model has no lesion decoder (model.net.lesion_decoder=false)")
    ys, probs, lesion = [], {v: [] for v in [*VIEWS, *TOGGLED]}, []
    for x, y, *_ in run.loader(part):
        ys.append(y.numpy())
        for name, view in VIEWS.items():
            out = net.forward_details(view(x), lesion=name == "as is")
            probs[name].append(torch.softmax(out.logits.float(), dim=1).numpy())
            if name == "as is":
                lesion.append(torch.sigmoid(out.lesion_logits.float()).flatten(1).amax(1).numpy())
        with zoom_toggled(net, zoom):
            for name, view in TOGGLED.items():
                out = net.forward_details(view(x), lesion=False)
                probs[name].append(torch.softmax(out.logits.float(), dim=1).numpy())
    return np.concatenate(ys), {v: np.concatenate(p) for v, p in probs.items()}, np.concatenate(lesion)


def with_decoder_evidence(probs: np.ndarray, lesion_max: np.ndarray, weight: float) -> np.ndarray:
    """(N, C) probabilities, (N,) largest lesion probability -> (N, C), the normal class (last)
    raised by ``weight * logit(1 - lesion_max)`` on the log scale."""
    q = np.clip(lesion_max, 1e-4, 1 - 1e-4)
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    logp[:, -1] += weight * np.log((1 - q) / q)
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def options(views: dict[str, np.ndarray], lesion_max: np.ndarray) -> dict[str, np.ndarray]:
    """Every option's probabilities (N, C) for one member, fold and part."""
    out = {f"views: {name}": np.mean([views[v] for v in members], axis=0) for name, members in VIEW_SETS.items()}
    hflip = out["views: hflip (the recipe)"]
    out.update({f"decoder evidence, w = {w}": with_decoder_evidence(hflip, lesion_max, w) for w in DECODER_WEIGHTS})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("members", type=Path, nargs="+")
    parser.add_argument("--zoom", type=int, default=96, help="lesion zoom side (px) for the toggled views of "
                        "models trained without it (default 96)")
    args = parser.parse_args()
    who = [m.name for m in args.members] + (["ensemble"] if len(args.members) > 1 else [])
    val = {}    # (who, option) -> per-fold val scores
    test = {}   # (who, option) -> lists of labels, decided probabilities, plain scores
    classes = None
    for fold_dir in sorted(args.members[0].glob("fold_*")):
        runs = [FinishedRun.open(m / fold_dir.name) for m in args.members]
        same_split(runs)
        classes = runs[0].classifier.hparams.classes
        per_member = []  # per member: option -> (val probs, test probs)
        for run in runs:
            yv, views_v, lesion_v = score_views(run, "val", args.zoom)
            yt, views_t, lesion_t = score_views(run, "test", args.zoom)
            ov, ot = options(views_v, lesion_v), options(views_t, lesion_t)
            per_member.append({o: (ov[o], ot[o]) for o in ov})
        for option in per_member[0]:
            rows = [scored(yv, *m[option]) for m in per_member]
            if len(rows) > 1:
                rows.append(mean_of_members(rows))
            for name, (pv, pt, sv, st) in zip(who, rows):
                val.setdefault((name, option), []).append(val_score(yv, pv, sv, classes))
                parts = test.setdefault((name, option), ([], [], []))
                parts[0].append(yt), parts[1].append(pt), parts[2].append(st)
        print(f"{fold_dir.name} done", file=sys.stderr)
    print(f"| model | option | val score (cross-fitted offsets) | {pooled_columns(classes)} |")
    print("|---|---|---|---|---|" + "---|" * len(classes))
    for (name, option), scores in val.items():
        y, p, s = (np.concatenate(part) for part in test[(name, option)])
        print(f"| {name} | {option} | {np.mean(scores):.3f} | {pooled_cells(y, p, s, classes)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
