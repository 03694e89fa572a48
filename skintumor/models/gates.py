"""Grid attention gate (Schlemper et al., Medical Image Analysis 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skintumor.errors import ConfigError


class GridAttentionGate(nn.Module):
    """Gate a feature map ``x`` with a coarser gating signal ``g``.

    ``alpha = norm(psi(relu(theta(x) + up(phi(g)))))``; returns ``x * alpha`` and ``alpha``.

    Shapes: x (B, Cx, H, W), g (B, Cg, h, w) with h <= H -> gated (B, Cx, H, W), alpha (B, 1, H, W).

    normalization:
        "sigmoid": each position in (0, 1) independently (default).
        "softmax": a spatial distribution (sums to 1 over H*W). No sigmoid follows it: the study's
            code squashed the softmax through a sigmoid, pinning every gate value near 0.5.
    """

    def __init__(self, in_channels: int, gating_channels: int, inter_channels: int | None = None,
                 normalization: str = "sigmoid"):
        super().__init__()
        if normalization not in ("sigmoid", "softmax"):
            raise ConfigError(f"normalization must be 'sigmoid' or 'softmax', got {normalization!r}")
        inter_channels = inter_channels or max(in_channels // 2, 1)
        self.normalization = normalization
        self.theta = nn.Conv2d(in_channels, inter_channels, kernel_size=1, bias=False)
        self.phi = nn.Conv2d(gating_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)

    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(B, Cx, H, W), (B, Cg, h, w) -> alpha (B, 1, H, W) in [0, 1]."""
        phi_g = F.interpolate(self.phi(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.psi(F.relu(self.theta(x) + phi_g))
        if self.normalization == "sigmoid":
            return torch.sigmoid(logits)
        b, _, h, w = logits.shape
        return torch.softmax(logits.flatten(1), dim=1).view(b, 1, h, w)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.attention(x, g)
        return x * alpha, alpha


def attention_pool(gated: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Attention-weighted mean: sum(alpha * x) / sum(alpha), (B, C, H, W) -> (B, C).

    With softmax gates this is Schlemper's weighted sum; with sigmoid gates the division keeps
    the scale of the features whatever the gate's overall level.
    """
    return gated.sum(dim=(2, 3)) / alpha.sum(dim=(2, 3)).clamp(min=1e-6)
