"""Saliency maps for one batch, all at input resolution and normalised to [0, 1].

Methods (:data:`METHODS`):
    gradcam, hirescam, gradcam++  gradient CAMs of the pytorch-grad-cam library on a target layer
                                  (default ``layer4``), for a target class per image.
    branch_cam                    the study's class activation map of the fused linear heads (below).
    gate2, gate3                  the two attention gates' maps (class-independent).
    decoder                       where the lesion decoder (``lesion_decoder=True``) outlines the lesion:
                                  its per-cell probability, upsampled (class-independent; not an
                                  attribution of the decision, but what the trunk learned to find).
    random                        sanity baseline: uniform noise drawn on the target layer's grid and
                                  upsampled, so it is as smooth as a CAM but knows nothing.

Branch CAM. The logit of class ``c`` is

    z_c = sum_k  W_fuse[c, k] . (H_k p_k + b_k) + b_fuse[c],      k in {gate2, gate3, layer4},

with p_2 = sum_ij a2_ij f2_ij / sum_ij a2_ij (attention pooling of the gated map), likewise p_3,
and p_4 = mean_ij f4_ij. It is linear in every p_k, so with the class weight vector of branch k

    w_k^c = sum_c' W_fuse[c, k*C + c'] H_k[c', :]          (a vector over the branch's channels)

each branch contributes a map over its own grid (positions ij)

    M_2^c(ij) = w_2^c . (a2_ij f2_ij) / sum a2,   M_3^c likewise,   M_4^c(ij) = w_4^c . f4_ij / (h4 w4)

whose sum over positions is exactly that branch's share of z_c (biases aside). The fused map spreads
each M_k^c over the input pixels it covers (bilinear upsampling divided by the area ratio, so it keeps
its sum), adds the three, keeps the positive part (evidence for c, as CAM and Grad-CAM do) and is
min-max normalised. The plain ResNet18 gives the classic CAM (Zhou et al. 2016) of ``fc`` on layer4.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from skintumor.models.attention_resnet import AttentionGatedResNet18

GRADIENT_METHODS = {"gradcam": GradCAM, "hirescam": HiResCAM, "gradcam++": GradCAMPlusPlus}
METHODS = ("gradcam", "hirescam", "gradcam++", "branch_cam", "gate2", "gate3", "decoder", "random")
MODEL_MAPS = ("gate2", "gate3", "decoder")  # left out for a network without gates or decoder


class LogitsOnly(nn.Module):
    """Wrap a classifier so that ``forward`` returns float logits (B, C) only, as grad-cam expects.

    Accepts our :class:`SkinTumorClassifier` or :class:`AttentionGatedResNet18`; a model returning
    a :class:`ModelOutput` or a tuple is reduced to its logits.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()


def network(model: nn.Module) -> nn.Module:
    """The bare network inside a Lightning module (``.model``) or a wrapper, else ``model`` itself."""
    while not isinstance(model, AttentionGatedResNet18) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    return model


def find_layer(model: nn.Module, name: str = "layer4") -> nn.Module:
    """The sub-module at dotted ``name`` of the bare network (e.g. "layer4", "layer3.1.conv2")."""
    try:
        return network(model).get_submodule(name)
    except AttributeError:
        raise ValueError(f"no layer {name!r} in {type(network(model)).__name__}") from None


def normalise(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each (..., H, W) map to [0, 1]; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def gradient_cam(
    model: nn.Module, x: torch.Tensor, targets: list[int], method: str = "gradcam", target_layer: str = "layer4"
) -> np.ndarray:
    """Grad-CAM / HiResCAM / Grad-CAM++ via pytorch-grad-cam: (B,1,H,W), B targets -> (B, H, W) in [0, 1].

    Runs with gradients on (outside any training or no-grad context); the logit of ``targets[i]``
    is explained for image ``i``.
    """
    if method not in GRADIENT_METHODS:
        raise ValueError(f"unknown gradient method {method!r} ({', '.join(GRADIENT_METHODS)})")
    wrapped = LogitsOnly(model).eval()
    with torch.enable_grad(), GRADIENT_METHODS[method](wrapped, [find_layer(model, target_layer)]) as cam:
        maps = cam(x.detach().float(), [ClassifierOutputTarget(int(t)) for t in targets])
    return normalise(maps)


def _branch_weights(net: AttentionGatedResNet18) -> dict[str, torch.Tensor]:
    """Class weight vectors w_k (C, channels_k) of each pooled branch (see the module docstring)."""
    C = net.num_classes
    if not net.attention:
        return {"layer4": net.fc.weight}
    fuse = net.fuse.weight  # (C, 3C)
    heads = {"gate2": net.head2, "gate3": net.head3, "layer4": net.head4}
    return {name: fuse[:, k * C : (k + 1) * C] @ head.weight for k, (name, head) in enumerate(heads.items())}


@torch.no_grad()
def branch_contributions(model: nn.Module, x: torch.Tensor, targets: list[int]) -> dict[str, torch.Tensor]:
    """Per-branch contribution maps M_k (B, h_k, w_k) on each branch's own grid for class ``targets[i]``.

    Their sums over positions add up to the target logit minus the heads' and fuse layer's biases.
    """
    net = network(model).eval()
    f2, f3, f4 = net.features(x.float())
    weights = {k: w[torch.as_tensor(targets, device=x.device)] for k, w in _branch_weights(net).items()}  # (B, c_k)
    maps = {"layer4": torch.einsum("bchw,bc->bhw", f4, weights["layer4"]) / (f4.shape[-2] * f4.shape[-1])}
    if net.attention:
        for name, feat, gate in (("gate2", f2, net.gate2), ("gate3", f3, net.gate3)):
            gated, alpha = gate(feat, f4)
            total = alpha.sum(dim=(1, 2, 3)).clamp(min=1e-6)
            maps[name] = torch.einsum("bchw,bc->bhw", gated, weights[name]) / total[:, None, None]
    return maps


def branch_cam(model: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """The fused branch CAM (module docstring): (B,1,H,W) -> (B, H, W) in [0, 1]."""
    size = x.shape[-2:]
    fused = torch.zeros(x.shape[0], *size)
    for raw in branch_contributions(model, x, targets).values():
        area_ratio = raw.shape[-2] * raw.shape[-1] / (size[0] * size[1])
        fused += (
            F.interpolate(raw[:, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[:, 0]
            * area_ratio
        )
    return normalise(fused.clamp(min=0).numpy())


@torch.no_grad()
def gate_maps(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The attention gates' maps at input resolution, {"gate2", "gate3"} -> (B, H, W) in [0, 1]; {} without gates."""
    maps = network(model).eval().attention_maps(x.float())
    return {name: normalise(m[:, 0].float().cpu().numpy()) for name, m in maps.items()}


@torch.no_grad()
def decoder_map(model: nn.Module, x: torch.Tensor) -> np.ndarray | None:
    """The lesion decoder's probability per pixel (sigmoid of its logits, upsampled bilinearly to the
    input), min-max scaled as the other maps: (B,1,H,W) -> (B, H, W) in [0, 1]; None without a decoder."""
    net = network(model).eval()
    if getattr(net, "lesion_decoder", None) is None:
        return None
    logits = net.forward_details(x.float()).lesion_logits  # (B, 1, H/8, W/8)
    probs = torch.sigmoid(F.interpolate(logits.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False))
    return normalise(probs[:, 0].cpu().numpy())


def random_maps(n: int, size: tuple[int, int], grid: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sanity baseline: (n, H, W) uniform noise on a ``grid`` (the target layer's), upsampled bilinearly."""
    noise = torch.from_numpy(rng.random((n, 1, *grid), dtype=np.float32))
    return normalise(F.interpolate(noise, size=tuple(size), mode="bilinear", align_corners=False)[:, 0].numpy())


def layer_grid(model: nn.Module, x: torch.Tensor, target_layer: str = "layer4") -> tuple[int, int]:
    """Spatial size (h, w) of ``target_layer``'s output for input ``x``."""
    seen = {}

    def record(module, inputs, output) -> None:  # a hook that returned a value would replace the output
        seen["shape"] = output.shape

    handle = find_layer(model, target_layer).register_forward_hook(record)
    try:
        with torch.no_grad():
            LogitsOnly(model).eval()(x[:1].float())
    finally:
        handle.remove()
    return tuple(seen["shape"][-2:])


def explain_batch(
    model: nn.Module,
    x: torch.Tensor,
    targets: list[int],
    methods=METHODS,
    target_layer: str = "layer4",
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Every requested map for a batch: method -> (B, H, W) float32 in [0, 1].

    Methods the model cannot give (gates on a plain ResNet18, decoder without one) are left out.
    """
    out: dict[str, np.ndarray] = {}
    gates = gate_maps(model, x) if {"gate2", "gate3"} & set(methods) else {}
    for method in methods:
        if method in GRADIENT_METHODS:
            out[method] = gradient_cam(model, x, targets, method, target_layer)
        elif method == "branch_cam":
            out[method] = branch_cam(model, x, targets)
        elif method in gates:
            out[method] = gates[method]
        elif method == "decoder":
            outline = decoder_map(model, x)
            if outline is not None:
                out[method] = outline
        elif method == "random":
            rng = rng if rng is not None else np.random.default_rng(0)
            out[method] = random_maps(len(x), x.shape[-2:], layer_grid(model, x, target_layer), rng)
        elif method not in MODEL_MAPS:
            raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    return out
