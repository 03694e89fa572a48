"""The training losses: focal loss (Lin et al. 2017) with per-class alpha for the class; the gates'
lesion-mask loss and the lesion decoder's loss for the masks, where the data has them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def inverse_frequency_alpha(class_counts: Sequence[int]) -> list[float]:
    """Per-class weights proportional to 1 / count, normalised to average 1.

    The rarest class weighs most; the study's code had this backwards.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).clamp(min=1)
    weights = 1.0 / counts
    return (weights * len(weights) / weights.sum()).tolist()


class FocalLoss(nn.Module):
    """``-alpha_y * (1 - p_y)^gamma * log p_y`` averaged over the batch, p = softmax(logits).

    gamma 0 and no alpha is exactly cross-entropy. ``alpha`` is a buffer, so it moves with the
    module to any device (the study's version silently dropped it on CPU).

    Shapes: logits (B, C), target (B,) int -> scalar.
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float32) if alpha is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        # per-sample cross-entropy, with optional label smoothing, keeps exact CE at gamma 0
        ce = F.nll_loss(log_p, target, reduction="none")
        if self.label_smoothing > 0:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * log_p.mean(dim=1)
        p_true = log_p.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - p_true).pow(self.gamma) * ce if self.gamma else ce
        if self.alpha is not None:
            loss = self.alpha[target] * loss
        return loss.mean()


def cell_targets(mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which masks are known, and the lesion's share of each cell of a ``size`` grid (area pooling).

    Shapes: mask (B, 1, H, W) with 1 lesion / 0 background, or -1 everywhere where no mask is known
    -> known (B,) bool, target (B, h*w) in [0, 1] (0 where the mask is unknown).
    """
    known = mask.flatten(1).amin(dim=1) >= 0
    return known, F.adaptive_avg_pool2d(mask.float().clamp(min=0), size).flatten(1)


def gate_mask_loss(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How far a gate map is from the lesion mask, over the images whose mask shows a lesion.

    Shapes: alpha (B, 1, h, w) sigmoid gate values; mask (B, 1, H, W) with 1 lesion / 0 background,
    or -1 everywhere where no mask is known -> scalar. The target is the lesion's share of each gate
    cell (area pooling to h x w); the loss is binary cross-entropy per cell. Images with no mask, or
    an empty one (nothing to point at), are left out; no image left at all gives 0.
    """
    known, target = cell_targets(mask, alpha.shape[-2:])
    use = known & (target.sum(dim=1) > 0)
    if not use.any():
        return alpha.sum() * 0.0  # keeps the graph (and DDP) happy
    a, t = alpha[use].float().flatten(1), target[use]
    a = a.clamp(1e-6, 1 - 1e-6)  # written out: F.binary_cross_entropy refuses CUDA autocast
    return -(t * a.log() + (1 - t) * (1 - a).log()).mean()


def lesion_mask_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The lesion decoder's loss: binary cross-entropy + soft Dice against the lesion mask.

    Shapes: logits (B, 1, h, w); mask (B, 1, H, W) with 1 lesion / 0 background, or -1 everywhere
    where no mask is known -> scalar. The target is the lesion's share of each cell (area pooling to
    h x w). Cross-entropy counts every image with a known mask, an empty one too ("no lesion here":
    a normal scan teaches the decoder to stay off); Dice, which keeps a small lesion from being
    drowned by its background, counts the images with a lesion. No known mask at all gives 0.
    """
    known, target = cell_targets(mask, logits.shape[-2:])
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP) happy
    z, target = logits[known].float().flatten(1), target[known]
    loss = F.binary_cross_entropy_with_logits(z, target)
    lesion = target.sum(dim=1) > 0
    if lesion.any():
        p, t = torch.sigmoid(z[lesion]), target[lesion]
        dice = (2 * (p * t).sum(dim=1) + 1) / (p.sum(dim=1) + t.sum(dim=1) + 1)
        loss = loss + (1 - dice).mean()
    return loss
