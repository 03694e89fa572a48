"""ResNet18 with grid attention gates on layer2 and layer3, gated by layer4 (the study's network).

    x (B,1,H,W) -> conv1..layer1 -> layer2 f2 (B,128,H/8,W/8) -> layer3 f3 (B,256,H/16,W/16)
                -> layer4 f4 (B,512,H/32,W/32)
    gate2(f2, f4), gate3(f3, f4) -> attention-pooled (B,128), (B,256); avg-pooled f4 (B,512)
    aggregation "ft": a linear head on each, a linear layer fuses the three heads' logits
                "deep_sup": as "ft", and the branch heads get auxiliary losses in training
                "concat": one linear layer on the concatenated pooled features
    attention=False: plain ResNet18 (avg-pooled f4 -> linear), the baseline.
    lesion_decoder=True: also f2, f3, f4 -> lesion logits (B,1,H/8,W/8), an auxiliary task in training;
                    with lesion_decoder_stride=4 also layer1's f1 (B,64,H/4,W/4) -> logits (B,1,H/4,W/4).
                    lesion_decoder_classes=True: the decoder also tells the class per cell (B,C,h,w).
    stem_pool=False: no max-pool after conv1, so every map from layer1 on is twice as fine (f1 H/2 ...
                    f4 H/16; at 128 px layer4 is 8 x 8 instead of 4 x 4), at about 4x the compute.
    lesion_zoom=S > 0: a second look through the same network at an S x S crop around the lesion the
                    decoder found (the whole image where it finds none); the logits are the two views' mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from skintumor.errors import ConfigError
from skintumor.models.gates import GridAttentionGate, attention_pool
from skintumor.models.lesion_decoder import LesionDecoder
from skintumor.models.lesion_zoom import crop_boxes, lesion_boxes

AGGREGATIONS = ("ft", "deep_sup", "concat")


class WeightsError(RuntimeError):
    """Pretrained weights could not be had (no network, missing or unsuitable file)."""


@dataclass
class ModelOutput:
    """logits (B, C); branch_logits: per-branch head logits (B, C) for ft/deep_sup (gate2, gate3,
    layer4), empty otherwise; attention: gate maps (B, 1, h, w) at their feature grid; lesion_logits:
    the lesion decoder's (B, 1, H/s, W/s), s its stride (8 or 4), when the network has one and it was
    asked for, else None; lesion_class_logits: its class logits per cell (B, C, H/s, W/s) when it has
    them (``lesion_decoder_classes``), else None; zoom_boxes: with ``lesion_zoom``, the crops' boxes
    (B, 3: centre x, centre y, side, fractions of the image; side 1 = the whole image), else None."""

    logits: torch.Tensor
    branch_logits: list[torch.Tensor] = field(default_factory=list)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    lesion_logits: torch.Tensor | None = None
    lesion_class_logits: torch.Tensor | None = None
    zoom_boxes: torch.Tensor | None = None


class AttentionGatedResNet18(nn.Module):
    """The study's network; ``attention=False`` gives the plain ResNet18 baseline.

    Trunk modules keep torchvision's names (conv1, bn1, layer1..layer4), so torchvision weights load
    directly. ``forward`` returns logits only; :meth:`forward_details` also returns branch logits and
    attention maps, and :meth:`attention_maps` the maps at input resolution.
    """

    def __init__(self, num_classes: int = 3, attention: bool = True, aggregation: str = "ft",
                 normalization: str = "sigmoid", pretrained: bool = False, weights_path: str | None = None,
                 dropout: float = 0.0, lesion_decoder: bool = False, lesion_decoder_stride: int = 8,
                 lesion_decoder_classes: bool = False, lesion_zoom: int = 0, lesion_zoom_margin: float = 1.5,
                 stem_pool: bool = True):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if lesion_decoder_stride not in (8, 4):
            raise ConfigError(f"lesion_decoder_stride must be 8 (cells from layer2) or 4 (from layer1), "
                              f"got {lesion_decoder_stride!r}")
        if lesion_zoom and not lesion_decoder:
            raise ConfigError("lesion_zoom needs lesion_decoder=true: the decoder says where the lesion is")
        self.num_classes, self.attention, self.aggregation = num_classes, attention, aggregation
        self.lesion_zoom, self.lesion_zoom_margin = int(lesion_zoom or 0), float(lesion_zoom_margin)
        trunk = resnet18(weights=None)
        # 1-channel input: greyscale B-mode
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = trunk.bn1, trunk.relu
        # the max-pool has no weights, so pretrained weights load either way
        self.maxpool = trunk.maxpool if stem_pool else nn.Identity()
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.dropout = nn.Dropout(dropout)
        self.lesion_decoder = None
        if lesion_decoder:
            self.lesion_decoder = LesionDecoder(fine_channels=64 if lesion_decoder_stride == 4 else None,
                                                num_classes=num_classes if lesion_decoder_classes else 0)
        if not attention:
            self.fc = nn.Linear(512, num_classes)
        else:
            self.gate2 = GridAttentionGate(128, 512, normalization=normalization)
            self.gate3 = GridAttentionGate(256, 512, normalization=normalization)
            if aggregation == "concat":
                self.fc = nn.Linear(128 + 256 + 512, num_classes)
            else:
                self.head2 = nn.Linear(128, num_classes)
                self.head3 = nn.Linear(256, num_classes)
                self.head4 = nn.Linear(512, num_classes)
                self.fuse = nn.Linear(3 * num_classes, num_classes)
        if pretrained:
            try:
                weights = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
            except Exception as err:  # urllib/ssl/hash errors: say what to do instead
                raise WeightsError(f"could not download torchvision's ImageNet ResNet18 weights ({err}); "
                                   "download resnet18-f37072fd.pth elsewhere and set model.net.weights_path=FILE") from None
            self.load_trunk_weights(weights)
        if weights_path:
            self.load_trunk_weights(_read_state_dict(weights_path))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,1,H,W) -> f2 (B,128,H/8,W/8), f3 (B,256,H/16,W/16), f4 (B,512,H/32,W/32) (half the
        strides with ``stem_pool=False``)."""
        return self.pyramid(x)[1:]

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B,1,H,W) -> f1 (B,64,H/4,W/4) and :meth:`features`' f2, f3, f4."""
        f1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return f1, f2, f3, self.layer4(f3)

    def forward_details(self, x: torch.Tensor, lesion: bool = True) -> ModelOutput:
        """``lesion=False`` skips the lesion decoder (evaluation needs only the logits), unless the
        zoom needs it; the maps and lesion logits are the whole image's."""
        if not self.lesion_zoom:
            return self.view_details(x, lesion)
        out = self.view_details(x, lesion=True)
        boxes = lesion_boxes(out.lesion_logits, self.lesion_zoom_margin)
        zoomed = self.view_details(crop_boxes(x, boxes, self.lesion_zoom), lesion=False)
        out.logits, out.zoom_boxes = (out.logits + zoomed.logits) / 2, boxes
        out.branch_logits = [(a + b) / 2 for a, b in zip(out.branch_logits, zoomed.branch_logits)]
        if not lesion:
            out.lesion_logits = out.lesion_class_logits = None
        return out

    def view_details(self, x: torch.Tensor, lesion: bool = True) -> ModelOutput:
        """One look at ``x``: :meth:`forward_details` without the zoom."""
        f1, f2, f3, f4 = self.pyramid(x)
        lesion_logits = class_logits = None
        if lesion and self.lesion_decoder is not None:
            decoded = self.lesion_decoder(f2, f3, f4, f1)
            lesion_logits = decoded[:, :1]
            class_logits = decoded[:, 1:] if decoded.shape[1] > 1 else None
        p4 = self.dropout(torch.flatten(F.adaptive_avg_pool2d(f4, 1), 1))
        if not self.attention:
            return ModelOutput(self.fc(p4), lesion_logits=lesion_logits, lesion_class_logits=class_logits)
        gated2, a2 = self.gate2(f2, f4)
        gated3, a3 = self.gate3(f3, f4)
        p2 = self.dropout(attention_pool(gated2, a2))
        p3 = self.dropout(attention_pool(gated3, a3))
        maps = {"gate2": a2, "gate3": a3}
        if self.aggregation == "concat":
            return ModelOutput(self.fc(torch.cat([p2, p3, p4], dim=1)), attention=maps, lesion_logits=lesion_logits,
                               lesion_class_logits=class_logits)
        branches = [self.head2(p2), self.head3(p3), self.head4(p4)]
        return ModelOutput(self.fuse(torch.cat(branches, dim=1)), branches, maps, lesion_logits, class_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> logits (B, num_classes)."""
        return self.forward_details(x, lesion=False).logits

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gate maps upsampled to the input, {"gate2", "gate3"} -> (B, 1, H, W); empty without gates."""
        maps = self.forward_details(x, lesion=False).attention
        return {k: F.interpolate(v, size=x.shape[-2:], mode="bilinear", align_corners=False)
                for k, v in maps.items()}

    def load_trunk_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load torchvision-named trunk weights; an RGB conv1 becomes the mean of its colour filters."""
        trunk_keys = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
        state = {k: v for k, v in state_dict.items() if k.startswith(trunk_keys)}
        if not state:
            raise WeightsError("no ResNet trunk weights (conv1/bn1/layer1-4) found in the weights file")
        if state["conv1.weight"].shape[1] == 3:
            state["conv1.weight"] = state["conv1.weight"].mean(dim=1, keepdim=True)
        missing, _ = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith(trunk_keys)]
        if missing:
            raise WeightsError(f"weights file lacks trunk weights: {', '.join(missing[:3])} ...")


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision state dict, or a skintumor/Lightning checkpoint (its ``model.`` weights)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one that needs unpickling arbitrary objects
        raise WeightsError(f"{path}: not a readable weights file ({str(err).splitlines()[0]})") from None
    if "state_dict" in data:  # Lightning checkpoint of SkinTumorClassifier (its EMA weights if it has them)
        prefix = "ema.module." if any(k.startswith("ema.module.") for k in data["state_dict"]) else "model."
        data = {k.removeprefix(prefix): v for k, v in data["state_dict"].items() if k.startswith(prefix)}
    return data
