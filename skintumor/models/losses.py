"""Focal loss (Lin et al. 2017), multi-class, with per-class alpha."""
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
