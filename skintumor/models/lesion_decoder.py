"""A light top-down decoder that segments the lesion from the trunk's features (multi-task learning).

With random init and a few hundred images, a class label is little signal per image; a lesion
outline is a label per pixel. Training the trunk to outline the lesion too gives it dense
supervision; the classifier heads are unchanged and the decoder is not used for the decision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LesionDecoder(nn.Module):
    """FPN-style: 1x1 laterals to ``width`` channels, upsample-and-add from layer4 down to layer2,
    a 3x3 conv, then one logit per cell.

    Shapes: f2 (B,128,H/8,W/8), f3 (B,256,H/16,W/16), f4 (B,512,H/32,W/32) -> logits (B,1,H/8,W/8).
    """

    def __init__(self, in_channels: tuple[int, int, int] = (128, 256, 512), width: int = 64):
        super().__init__()
        self.lateral2, self.lateral3, self.lateral4 = (nn.Conv2d(c, width, kernel_size=1) for c in in_channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(width, 1, kernel_size=1)

    def forward(self, f2: torch.Tensor, f3: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        p = self.lateral4(f4)
        p = self.lateral3(f3) + F.interpolate(p, size=f3.shape[-2:], mode="nearest")
        p = self.lateral2(f2) + F.interpolate(p, size=f2.shape[-2:], mode="nearest")
        return self.classifier(self.smooth(p))
