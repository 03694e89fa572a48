"""Grid attention gate (Schlemper et al., Medical Image Analysis 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GridAttentionGate(nn.Module):
    """Gate a feature map ``x`` with a coarser gating signal ``g``.

    ``alpha = sigmoid(psi(relu(theta(x) + up(phi(g)))))``; returns ``x * alpha`` and ``alpha``.

    Shapes: x (B, Cx, H, W), g (B, Cg, h, w) with h <= H -> gated (B, Cx, H, W), alpha (B, 1, H, W).

    Each position's gate lies in (0, 1) independently. The study's code squashed a spatial softmax
    through a sigmoid, which pins every gate value near 0.5; a plain sigmoid lets the gate switch off.
    """

    def __init__(self, in_channels: int, gating_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter_channels = inter_channels or max(in_channels // 2, 1)
        self.theta = nn.Conv2d(in_channels, inter_channels, kernel_size=1, bias=False)
        self.phi = nn.Conv2d(gating_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)

    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(B, Cx, H, W), (B, Cg, h, w) -> alpha (B, 1, H, W) in (0, 1)."""
        phi_g = F.interpolate(self.phi(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.psi(F.relu(self.theta(x) + phi_g)))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.attention(x, g)
        return x * alpha, alpha


def attention_pool(gated: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Attention-weighted mean: sum(alpha * x) / sum(alpha), (B, C, H, W) -> (B, C).

    The division keeps the scale of the features whatever the gate's overall level.
    """
    return gated.sum(dim=(2, 3)) / alpha.sum(dim=(2, 3)).clamp(min=1e-6)
