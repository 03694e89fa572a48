"""ResNet18 with grid attention gates on layer2 and layer3, gated by layer4 (the study's network).

x (B,1,H,W) -> conv1..layer1 -> layer2 f2 (B,128,H/8,W/8) -> layer3 f3 (B,256,H/16,W/16)
            -> layer4 f4 (B,512,H/32,W/32)
gate2(f2, f4), gate3(f3, f4) -> attention-pooled (B,128), (B,256); avg-pooled f4 (B,512)
a linear head on each, a linear layer fuses the three heads' logits -> logits (B,C)
attention=False: plain ResNet18 (avg-pooled f4 -> linear), the baseline.
lesion_decoder=True: also f2, f3, f4 -> lesion logits (B,1,H/8,W/8), an auxiliary task in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from skintumor.errors import WeightsError
from skintumor.models.gates import GridAttentionGate, attention_pool
from skintumor.models.lesion_decoder import LesionDecoder


@dataclass
class ModelOutput:
    """logits (B, C); attention: gate maps (B, 1, h, w) at their feature grid (empty without gates);
    lesion_logits: the lesion decoder's (B, 1, H/8, W/8) when the network has one and it was asked
    for, else None."""

    logits: torch.Tensor
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    lesion_logits: torch.Tensor | None = None


class AttentionGatedResNet18(nn.Module):
    """The study's network; ``attention=False`` gives the plain ResNet18 baseline.

    Trunk modules keep torchvision's names (conv1, bn1, layer1..layer4), so torchvision weights load
    directly. ``forward`` returns logits only; :meth:`forward_details` also returns the attention
    maps and lesion logits, and :meth:`attention_maps` the maps at input resolution.
    """

    def __init__(
        self,
        num_classes: int = 3,
        attention: bool = True,
        pretrained: bool = False,
        weights_path: str | None = None,
        lesion_decoder: bool = False,
    ):
        super().__init__()
        self.num_classes, self.attention = num_classes, attention
        trunk = resnet18(weights=None)
        # 1-channel input: greyscale B-mode
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu, self.maxpool = trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.lesion_decoder = LesionDecoder() if lesion_decoder else None
        if not attention:
            self.fc = nn.Linear(512, num_classes)
        else:
            self.gate2 = GridAttentionGate(128, 512)
            self.gate3 = GridAttentionGate(256, 512)
            self.head2 = nn.Linear(128, num_classes)
            self.head3 = nn.Linear(256, num_classes)
            self.head4 = nn.Linear(512, num_classes)
            self.fuse = nn.Linear(3 * num_classes, num_classes)
        if pretrained:
            try:
                weights = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
            except Exception as err:  # urllib/ssl/hash errors: say what to do instead
                raise WeightsError(
                    f"could not download torchvision's ImageNet ResNet18 weights ({err}); "
                    "download resnet18-f37072fd.pth elsewhere and set model.net.weights_path=FILE"
                ) from None
            self.load_trunk_weights(weights)
        if weights_path:
            self.load_trunk_weights(_read_state_dict(weights_path), Path(weights_path).expanduser())

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,1,H,W) -> f2 (B,128,H/8,W/8), f3 (B,256,H/16,W/16), f4 (B,512,H/32,W/32)."""
        f1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return f2, f3, self.layer4(f3)

    def forward_details(self, x: torch.Tensor, lesion: bool = True) -> ModelOutput:
        """(B,1,H,W) -> logits, gate maps and (``lesion=True`` and a decoder) the lesion logits;
        ``lesion=False`` skips the decoder (evaluation needs only the logits)."""
        f2, f3, f4 = self.features(x)
        lesion_logits = self.lesion_decoder(f2, f3, f4) if lesion and self.lesion_decoder is not None else None
        p4 = torch.flatten(F.adaptive_avg_pool2d(f4, 1), 1)
        if not self.attention:
            return ModelOutput(self.fc(p4), lesion_logits=lesion_logits)
        gated2, a2 = self.gate2(f2, f4)
        gated3, a3 = self.gate3(f3, f4)
        branches = [self.head2(attention_pool(gated2, a2)), self.head3(attention_pool(gated3, a3)), self.head4(p4)]
        return ModelOutput(self.fuse(torch.cat(branches, dim=1)), {"gate2": a2, "gate3": a3}, lesion_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> logits (B, num_classes)."""
        return self.forward_details(x, lesion=False).logits

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gate maps upsampled to the input, {"gate2", "gate3"} -> (B, 1, H, W); empty without gates."""
        maps = self.forward_details(x, lesion=False).attention
        return {k: F.interpolate(v, size=x.shape[-2:], mode="bilinear", align_corners=False) for k, v in maps.items()}

    def load_trunk_weights(self, state_dict: dict[str, torch.Tensor], source: str | Path = "the weights file") -> None:
        """Load torchvision-named trunk weights; an RGB conv1 becomes the mean of its colour filters.
        ``source`` names the file in the WeightsError of weights that do not fit."""
        trunk_keys = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
        state = {k: v for k, v in state_dict.items() if k.startswith(trunk_keys)}
        if not state:
            raise WeightsError(f"{source}: no ResNet trunk weights (conv1/bn1/layer1-4) found in it")
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] == 3:
            state["conv1.weight"] = conv1.mean(dim=1, keepdim=True)
        own = self.state_dict()
        unknown = sorted(k for k in state if k not in own)
        misfit = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
        if unknown or misfit:  # another network's weights (a ResNet34/50, a 3-class head ...)
            shown = [f"{k} {tuple(state[k].shape)} (here {tuple(own[k].shape)})" for k in misfit[:3]] + unknown[:3]
            more = " ..." if len(misfit) + len(unknown) > 3 else ""
            raise WeightsError(
                f"{source}: weights that do not fit this ResNet18: {', '.join(shown[:3])}{more} (a ResNet18 file?)"
            )
        missing, _ = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith(trunk_keys)]
        if missing:
            raise WeightsError(f"{source}: lacks trunk weights: {', '.join(missing[:3])} ...")


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision state dict, or a skintumor/Lightning checkpoint (its ``model.`` weights)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one that needs unpickling arbitrary objects
        raise WeightsError(f"{path}: not a readable weights file ({str(err).splitlines()[0]})") from None
    if isinstance(data, dict) and "state_dict" in data:  # Lightning checkpoint of SkinTumorClassifier
        data = data["state_dict"]
        if isinstance(data, dict):
            data = {
                k.removeprefix("model."): v for k, v in data.items() if isinstance(k, str) and k.startswith("model.")
            }
    if not (
        isinstance(data, dict)
        and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided for k, v in data.items()
        )
    ):
        raise WeightsError(
            f"{path}: not a state dict of tensors (a torchvision ResNet18 file or a skintumor checkpoint)"
        )
    return data
