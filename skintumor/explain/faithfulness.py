"""Is a map what the model uses? ROAD (Rong et al., ICML 2022) through pytorch-grad-cam's metrics.

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
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from skintumor.explain.cam import LogitsOnly

PERCENTILES = (20, 40, 60, 80)  # keep 20..80 % of the pixels: removal shares 80..20 %


def tie_broken_ranks(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, H, W) maps -> (B, H, W) ranks scaled to [0, 1]; equal values get distinct, random order."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    jitter = rng.random(flat.shape)
    order = np.lexsort((jitter, flat), axis=-1)  # by value, then by jitter
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None].repeat(b, 0), axis=-1)
    return (ranks / max(1, flat.shape[1] - 1)).reshape(maps.shape).astype(np.float32)


def road_scores(
    model: nn.Module, x: torch.Tensor, maps: np.ndarray, targets: list[int], percentiles=PERCENTILES, seed: int = 0
) -> dict[str, np.ndarray]:
    """ROAD of maps (B, H, W) for images x (B, 1, H, W) and target classes -> {"morf", "lerf", "road"}: (B,) each."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the imputer's noise
    ranked = tie_broken_ranks(np.asarray(maps, dtype=np.float32), rng)
    wrapped = LogitsOnly(model).eval()
    target_fns = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    x = x.detach().float()
    morf = ROADMostRelevantFirstAverage(list(percentiles))(x, ranked, target_fns, wrapped)
    lerf = ROADLeastRelevantFirstAverage(list(percentiles))(x, ranked, target_fns, wrapped)
    morf, lerf = np.asarray(morf, float).reshape(-1), np.asarray(lerf, float).reshape(-1)
    return {"morf": morf, "lerf": lerf, "road": (lerf - morf) / 2}
