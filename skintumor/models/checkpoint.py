"""Reading a checkpoint safely: tensors and plain data only (``torch.load(weights_only=True)``),
older checkpoints' retired options dropped, and every failure one line naming the file."""

from __future__ import annotations

from pathlib import Path

import torch

from skintumor.errors import DataError
from skintumor.models.module import SkinTumorClassifier

ANY = object()
RETIRED = {  # (group, key) of options tried and retired: the value that kept each off (ANY: never acted alone)
    ("net", "aggregation"): "ft",
    ("net", "normalization"): "sigmoid",
    ("net", "dropout"): 0.0,
    ("net", "stem_pool"): True,
    ("net", "lesion_decoder_stride"): 8,
    ("net", "lesion_decoder_classes"): False,
    ("net", "lesion_zoom"): 0,
    ("net", "lesion_zoom_margin"): ANY,
    ("loss", "empty_mask"): "skip",
    ("loss", "aux_weight"): ANY,
    ("loss", "lesion_class_weight"): ANY,
    (None, "ema_decay"): None,
    (None, "mixing"): {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
}


def drop_retired_settings(hp: dict, source: Path) -> dict:
    """An older checkpoint's hyper-parameters without the retired options it holds at their "off"
    value; DataError naming the file and the option when one was on (this version cannot rebuild it)."""
    hp = {k: dict(v) if isinstance(v, dict) else v for k, v in hp.items()}
    for (group, key), off in RETIRED.items():
        part = hp.get(group, {}) if group else hp
        if key in part and (value := part.pop(key)) != off and off is not ANY:
            name = f"{group}.{key}" if group else key
            raise DataError(f"{source}: trained with {name}={value!r}, a retired option this version cannot rebuild")
    return hp


def read_checkpoint(checkpoint: str | Path, map_location: str = "cpu"):
    """A checkpoint's contents, tensors and plain data only (a pickle that would run code is never loaded);
    a missing, truncated or foreign file is one DataError line."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: checkpoint not found")
    try:
        return torch.load(checkpoint, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, not a torch file, or one that needs unpickling arbitrary objects
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in reason or "Unsupported global" in reason:
            reason = "it holds Python objects, not only tensors (never loaded: unpickling could run code)"
        raise DataError(f"{checkpoint}: not a readable checkpoint ({reason[:160]})") from None


def load_classifier(checkpoint: str | Path, map_location: str = "cpu") -> SkinTumorClassifier:
    """Rebuild a trained classifier from a checkpoint; reads tensors and plain data only."""
    checkpoint = Path(checkpoint)
    data = read_checkpoint(checkpoint, map_location)
    hp = data.get("hyper_parameters") if isinstance(data, dict) else None
    if not isinstance(hp, dict) or not isinstance(data.get("state_dict"), dict) or "classes" not in hp:
        raise DataError(
            f"{checkpoint}: not a skintumor checkpoint (no weights, or no hyper-parameters with class names)"
        )
    lacking = [key for key, kind in (("classes", (list, tuple)), ("net", dict)) if not isinstance(hp.get(key), kind)]
    if lacking:
        raise DataError(f"{checkpoint}: not a skintumor checkpoint (its hyper-parameters lack {' and '.join(lacking)})")
    hp = drop_retired_settings(hp, checkpoint)
    hp["net"] = dict(hp["net"]) | {"pretrained": False, "weights_path": None}  # weights come from the file
    try:
        module = SkinTumorClassifier(**hp)
    except (TypeError, ValueError, KeyError) as err:  # settings this version cannot build the network from
        raise DataError(f"{checkpoint}: cannot rebuild the classifier from its hyper-parameters ({err})") from None
    module.on_load_checkpoint(data)
    try:
        module.load_state_dict(data["state_dict"])
    except RuntimeError as err:  # missing, unexpected or mis-shaped weights
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise DataError(f"{checkpoint}: its weights do not fit its network ({detail[:300]})") from None
    return module.eval()


__all__ = ["RETIRED", "drop_retired_settings", "read_checkpoint", "load_classifier"]
