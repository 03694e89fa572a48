"""Is a map what the model uses? ROAD (Rong et al., ICML 2022), as pytorch-grad-cam computes it, in batches.

ROAD removes a share of the pixels a map ranks highest (MoRF) or lowest (LeRF), fills them by noisy
linear imputation from their neighbours (no black boxes the model never saw, which is what breaks
plain deletion on ultrasound, where black means anechoic fluid), and records the change in the
target class's probability, averaged over removal shares. Per image:

    morf   mean change after removing the most relevant pixels first   (more negative = more faithful)
    lerf   mean change after removing the least relevant pixels first  (near 0 = more faithful)
    road   (lerf - morf) / 2, the library's ROADCombined               (higher = more faithful)

A map that looks right but is not what the model uses scores no better than the random map; the
report tests this with a paired Wilcoxon test per method.

The library thresholds a map at percentiles; CAMs have flat zero regions (after the ReLU) whose ties
would remove far more pixels than the percentile says, so maps are passed as tie-broken ranks (same
order, every pixel distinct; ties broken at random, seeded).

Cost. The numbers are those of the library's ``ROADMostRelevantFirstAverage`` and
``ROADLeastRelevantFirstAverage`` (its removal masks, its ``NoisyLinearImputer`` system and noise
draws, in its order; ``tests/test_explain.py`` checks equality to 1e-5), computed faster:

- every perturbed image of a batch, both orders and all percentiles, and the originals go through
  ONE forward pass (the library runs two per percentile and order: 16 with 4 percentiles);
- the imputation's sparse system is built in one vectorised step (the library fills a
  ``lil_matrix`` element-wise, which costs as much as the solve) and solved by SuperLU in symmetric
  mode without pivoting (the system is symmetric and diagonally dominant), with a minimum-degree
  ordering on A + A^T: about half the time of the library's ``spsolve``, same solution to 1e-12;
- the solves run on ``workers`` threads (SuperLU releases the GIL); the noise is added afterwards
  in the library's order, so the result does not depend on the number of threads.

What remains is one sparse solve per image, map, order and percentile (8 per image and map by
default) and one forward per perturbed image: at 128 px on one CPU thread 2.8 s per image for the
recipe's 8 maps, against 7.3 s the library's way (``python -m benchmarks.explain_speed``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu, spsolve
from torch import nn

from skintumor.explain.cam import LogitsOnly

PERCENTILES = (20, 40, 60, 80)  # keep 20..80 % of the pixels: removal shares 80..20 %
ORDERS = ("morf", "lerf")
NOISE = NoisyLinearImputer().noise  # the library's noise magnitude (0.01)


def tie_broken_ranks(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, H, W) maps -> (B, H, W) ranks scaled to [0, 1]; equal values get distinct, random order."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    jitter = rng.random(flat.shape)
    order = np.lexsort((jitter, flat), axis=-1)  # by value, then by jitter
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None].repeat(b, 0), axis=-1)
    return (ranks / max(1, flat.shape[1] - 1)).reshape(maps.shape).astype(np.float32)


def kept_pixels(ranked: np.ndarray, percentile: float, order: str) -> np.ndarray:
    """(H, W) float32 mask, 1 = kept, 0 = removed and imputed, exactly as the library's
    ``RemoveMostRelevantFirst`` ("morf") / ``RemoveLeastRelevantFirst`` ("lerf") make it."""
    cam = torch.from_numpy(ranked)
    cam = cam if order == "morf" else 1 - cam
    return np.float32(cam < np.percentile(cam.numpy(), percentile))


def imputation_system(keep: np.ndarray, img: np.ndarray) -> tuple[csc_matrix, np.ndarray]:
    """``NoisyLinearImputer.setup_sparse_system`` vectorised: keep (H, W) 0/1, img (C, H, W) float32 ->
    (A (N, N) CSC, b (N, C)) over the N removed pixels (row-major order); same entries, same sums."""
    h, w = keep.shape
    flat, values = keep.reshape(-1), img.reshape(img.shape[0], -1)
    removed = np.flatnonzero(flat == 0)
    n = len(removed)
    unknown_index = np.zeros(len(flat), dtype=int)
    unknown_index[removed] = np.arange(n)
    row, col = removed // w, removed % w
    total = np.ones(n)  # the library's sum of the weights of neighbours inside the image
    b = np.zeros((n, img.shape[0]))
    rows, cols, entries = [], [], []
    for (dy, dx), weight in neighbors_weights:
        inside = (row + dy >= 0) & (col + dx >= 0) & (row + dy < h) & (col + dx < w)
        total[~inside] -= weight
        equations = np.flatnonzero(inside)
        neighbours = removed[inside] + dy * w + dx
        known = flat[neighbours] > 0.5
        b[equations[known], :] -= weight * values[:, neighbours[known]].T
        free = flat[neighbours] < 0.5
        rows.append(equations[free])
        cols.append(unknown_index[neighbours[free]])
        entries.append(np.full(int(free.sum()), weight))
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    entries.append(-total)
    a = csc_matrix((np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return a, b


def solve_system(a: csc_matrix, b: np.ndarray) -> np.ndarray:
    """Solve A x = b as the library's ``spsolve`` does (x: (N,) for one channel, else (N, C)), faster:
    symmetric-mode SuperLU without pivoting (A is symmetric and weakly diagonally dominant), falling
    back to ``spsolve`` for a singular system (every pixel of a region removed)."""
    if a.shape[0] == 0:
        return np.zeros(b.shape[0] if b.shape[1] == 1 else b.shape)
    try:
        lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        x = lu.solve(b)
    except RuntimeError:  # exactly singular: whatever the library would give
        return spsolve(a, b)
    return x[:, 0] if b.shape[1] == 1 else x


def _infill(img: torch.Tensor, keep: np.ndarray, solution: np.ndarray, noise: float = NOISE) -> torch.Tensor:
    """The library's ``NoisyLinearImputer.__call__`` after its solve: solution + noise into the removed pixels."""
    flat = img.reshape(img.shape[0], -1)
    removed = np.argwhere(keep.reshape(-1) == 0).flatten()
    res = torch.tensor(solution, dtype=torch.float)
    filled = flat.clone()
    filled[:, removed] = res.t() + noise * torch.randn_like(res.t())
    return filled.reshape_as(img)


def road_scores(
    model: nn.Module,
    x: torch.Tensor,
    maps: np.ndarray,
    targets: list[int],
    percentiles=PERCENTILES,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """ROAD of maps (B, H, W) for images x (B, 1, H, W) and target classes -> {"morf", "lerf", "road"}: (B,) each.

    The library's numbers (module docstring) with one forward pass for the batch; ``workers``: threads
    for the sparse solves (default: torch's thread count)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the imputer's noise
    ranked = tie_broken_ranks(np.asarray(maps, dtype=np.float32), rng)
    x = x.detach().float()
    images = x.cpu()
    jobs = [(i, kept_pixels(ranked[i], p, order)) for order in ORDERS for p in percentiles for i in range(len(x))]

    def solve(job: tuple[int, np.ndarray]) -> np.ndarray:
        i, keep = job
        return solve_system(*imputation_system(keep, images[i].numpy()))

    workers = max(1, min(len(jobs), workers or torch.get_num_threads()))
    if workers == 1:
        solutions = [solve(job) for job in jobs]
    else:
        with ThreadPoolExecutor(workers) as pool:
            solutions = list(pool.map(solve, jobs))
    perturbed = [_infill(images[i], keep, s) for (i, keep), s in zip(jobs, solutions)]  # noise in the library's order
    batch = torch.cat([x, torch.stack(perturbed).to(x.device)])
    with torch.no_grad():
        probs = torch.softmax(LogitsOnly(model).eval()(batch), dim=-1)
    wanted = [int(t) for t in targets] + [int(targets[i]) for i, _ in jobs]
    scores = np.float32(probs[torch.arange(len(batch)), torch.as_tensor(wanted)].cpu().numpy())
    before, after = scores[: len(x)], scores[len(x) :].reshape(len(ORDERS), len(percentiles), len(x))
    morf, lerf = (np.mean(np.float32(after[k] - before), axis=0).astype(float) for k in range(len(ORDERS)))
    return {"morf": morf, "lerf": lerf, "road": (lerf - morf) / 2}
