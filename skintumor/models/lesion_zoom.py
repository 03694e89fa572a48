"""A second, magnified view of the lesion the decoder found (the network looks twice).

At 128 px a median BUSI lesion is about 34 px across: after the trunk's stride of 16 it spans two
cells of layer3, and its margin (circumscribed vs angular or spiculated) is below the grid. The
lesion decoder already says where the lesion is; cropping a square around it and resizing the crop
gives the same trunk the margin at two to three times the scale. No new pixels: the crop comes from
the 128 px input, so the protocol's resolution is kept. Where the decoder finds nothing (a normal
scan, or early in training) the "crop" is the whole image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lesion_boxes(lesion_logits: torch.Tensor, margin: float = 1.5, min_side: float = 0.25) -> torch.Tensor:
    """Square boxes around each image's predicted lesion, in fractions of the image.

    lesion_logits (B, 1, h, w) -> boxes (B, 3): centre x, centre y, side, all in [0, 1]. The box is
    the cells with probability > 0.5, squared up, grown by ``margin``, at least ``min_side`` and
    shifted to lie inside the image; no lesion cell: the whole image (0.5, 0.5, 1).
    """
    cells = torch.sigmoid(lesion_logits.detach().float()[:, 0]) > 0.5  # (B, h, w)
    h, w = cells.shape[-2:]

    def extent(found: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """found (B, n) -> first and one-past-last found index / n (tensor ops: no sync per image)."""
        index = torch.arange(n, device=found.device).expand_as(found)
        first = torch.where(found, index, n).min(dim=1).values
        last = torch.where(found, index, -1).max(dim=1).values + 1
        return first / n, last / n

    y0, y1 = extent(cells.any(dim=2), h)
    x0, x1 = extent(cells.any(dim=1), w)
    side = (torch.maximum(x1 - x0, y1 - y0) * margin).clamp(min=min_side, max=1.0)
    cx = torch.minimum(((x0 + x1) / 2).clamp(min=side / 2), 1 - side / 2)
    cy = torch.minimum(((y0 + y1) / 2).clamp(min=side / 2), 1 - side / 2)
    boxes = torch.stack([cx, cy, side], dim=1)
    nothing = ~cells.flatten(1).any(dim=1)
    boxes[nothing] = torch.tensor([0.5, 0.5, 1.0], device=boxes.device)
    return boxes


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """x (B, C, H, W), boxes (B, 3) from :func:`lesion_boxes` -> crops (B, C, size, size), bilinear."""
    cx, cy, side = boxes.unbind(dim=1)
    theta = torch.zeros(len(boxes), 2, 3, device=x.device)
    # affine_grid maps output coordinates in [-1, 1] to input ones: scale by the side, move to the centre
    theta[:, 0, 0], theta[:, 0, 2] = side, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = side, 2 * cy - 1
    grid = F.affine_grid(theta, [len(x), x.shape[1], size, size], align_corners=False)
    crops = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return crops.to(x.dtype).contiguous(memory_format=torch.channels_last)
