"""Batch mixing for training: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019).

Written here rather than taken from ``torchvision.transforms.v2.MixUp/CutMix``: those mix images and
labels only, and the gates' lesion-mask loss needs the masks mixed the same way as the images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MixedBatch:
    """A mixed batch: ``x`` (B, 1, H, W); the loss is ``lam * L(y_a) + (1 - lam) * L(y_b)``;
    ``masks`` (B, 1, H, W) mixed like ``x`` (-1 where either image's mask is unknown) or None."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float
    masks: torch.Tensor | None


def mix_batch(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None = None, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0) -> MixedBatch:
    """Mix each image with another of the batch (a random permutation).

    mixup: ``lam * x + (1 - lam) * x[perm]``, lam ~ Beta(mixup_alpha, mixup_alpha).
    CutMix: a box of area ``1 - lam`` (lam ~ Beta(cutmix_alpha, cutmix_alpha)) pasted from
    ``x[perm]``; lam is then the share of the image left unchanged. With both alphas > 0 each batch
    picks one of the two at random; with neither, the batch is returned unchanged (lam 1).

    Shapes: x (B, 1, H, W), y (B,) int, masks (B, 1, H, W) with 1 lesion / 0 background / -1 unknown.
    Draws from torch's global RNG, which Lightning's ``seed_everything`` seeds.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixing alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return MixedBatch(x, y, y, 1.0, masks)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    perm = torch.randperm(x.shape[0]).to(x.device)
    if use_cutmix:
        box, lam = _box(x.shape[-2:], lam)

    def mix(t: torch.Tensor) -> torch.Tensor:  # the same mixing for the images and their masks
        if not use_cutmix:
            return lam * t + (1 - lam) * t[perm]
        out = t.clone()
        out[..., box[0]:box[1], box[2]:box[3]] = t[perm][..., box[0]:box[1], box[2]:box[3]]
        return out

    mixed, mixed_masks = mix(x), None
    if masks is not None:
        known = (masks.flatten(1).amin(dim=1) >= 0) & (masks[perm].flatten(1).amin(dim=1) >= 0)
        mixed_masks = mix(masks)
        mixed_masks[~known] = -1.0
    return MixedBatch(mixed, y, y[perm], lam, mixed_masks)


def _box(size: torch.Size, lam: float) -> tuple[tuple[int, int, int, int], float]:
    """A box (top, bottom, left, right) of about ``1 - lam`` of an H x W image, centre uniform,
    clipped at the borders; returns it and the share of the image outside it."""
    h, w = int(size[0]), int(size[1])
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,)))
    cx = int(torch.randint(w, (1,)))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return (top, bottom, left, right), 1.0 - (bottom - top) * (right - left) / (h * w)
