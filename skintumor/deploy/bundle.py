"""The model bundle: what a user shares and deploys, a folder anyone can open.

    model/
      model.json              classes, the input contract and preprocessing, the network's settings,
                              the decision rule, members, CV metrics, the data it learned from, versions
      fold_0.safetensors ...  one file of weights per member (tensors only: nothing is unpickled)
      fold_0.onnx ...         optional (``export --onnx``): the member's whole decision path as ONNX

    export_bundle("outputs/cv/recipe_2026-12-05", "model/")      # a run, a CV sweep or an ensemble sweep
    bundle = load_bundle("model/")                                # checks every file before use
    bundle.members[0].classifier                                  # a SkinTumorClassifier in eval mode

A member is one trained run (one fold, or one seed of one fold for ``experiment=recipe_ensemble``),
exported from the checkpoint the run tested, so its class offsets (chosen on its validation split)
come with it. Every member must share the classes and the preprocessing; predictions average them.
Loading verifies each weights file against the SHA-256 in ``model.json``: a tampered, truncated or
foreign file is refused with one line naming it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import skintumor
from skintumor.errors import DataError
from skintumor.evaluate.conformal import COVERAGES
from skintumor.evaluate.finished_run import FinishedRun
from skintumor.models.module import SkinTumorClassifier, fill_default_buffers

FORMAT = "skintumor-bundle"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
INTENDED_USE = (
    "Research use only: a second opinion for benign skin tumours on B-mode ultrasound, not a medical device. "
    "Validated only by the cross-validation reported here; check it on your own scans before relying on it."
)
# what a member's classifier is rebuilt from (the rest of the training hyper-parameters do not predict)
CLASSIFIER_KEYS = ("classes", "net", "image_size", "mean", "std", "channels_last", "tta", "decision", "calibration")


@dataclass
class Member:
    """One trained run of the bundle: name (e.g. ``fold_0``), its classifier (eval mode), and the
    ONNX file of its decision path when the bundle has one."""

    name: str
    classifier: SkinTumorClassifier
    onnx: Path | None = None


@dataclass
class Bundle:
    """A loaded bundle: its folder, ``model.json`` as a dict, and the members."""

    path: Path
    meta: dict
    members: list[Member]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocessing(self) -> dict:
        """``image_size``, ``mean``, ``std``, ``scan_area_crop``: what every input goes through."""
        return dict(self.meta["preprocessing"])


def find_runs(directory: Path) -> dict[str, Path]:
    """Finished runs in ``directory``: itself, its ``fold_<k>`` runs, or ``member_<seed>/fold_<k>``
    (an ensemble sweep). -> member name -> run directory, sorted."""
    if (directory / "metrics_val.json").is_file():
        return {directory.name: directory}
    runs = sorted(p.parent for p in directory.glob("*/metrics_val.json")) + sorted(
        p.parent for p in directory.glob("member_*/fold_*/metrics_val.json")
    )
    return {"-".join(run.relative_to(directory).parts): run for run in runs}


def export_bundle(source: str | Path, out: str | Path, onnx: bool = False) -> Path:
    """Write the bundle of a finished run or sweep ``source`` into the new folder ``out``.

    Never overwrites: ``out`` must not exist or be empty. DataError naming the file for a missing or
    unreadable run, or members that do not agree on classes and preprocessing.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(f"{source}: not a folder (give a run directory or a cross-validation sweep)")
    runs = find_runs(source)
    if not runs:
        raise DataError(f"{source}: no finished training run in it (no metrics_val.json in it or its fold_<k> folders)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; bundles are never overwritten")
    opened = {name: FinishedRun.open(run) for name, run in runs.items()}
    first = next(iter(opened.values()))
    for run in opened.values():
        if _contract(run) != _contract(first):
            raise DataError(
                f"{run.path}: its classes or preprocessing differ from {first.path}'s; cannot be one bundle"
            )
    return write_bundle(
        out,
        {name: run.classifier for name, run in opened.items()},
        scan_area_crop=first.cropped,
        onnx=onnx,
        provenance={name: _provenance(run) for name, run in opened.items()},
        details={
            "cross_validation": _cv_metrics(source),
            "training_data": _training_data(first),
            "source": str(source.resolve()),
        },
    )


def write_bundle(
    out: Path,
    members: dict[str, SkinTumorClassifier],
    scan_area_crop: bool = False,
    onnx: bool = False,
    provenance: dict[str, dict] | None = None,
    details: dict | None = None,
) -> Path:
    """The bundle folder of trained classifiers (name -> classifier, one preprocessing): weights,
    ``model.json``, and with ``onnx`` each member's decision path as ONNX. ``provenance``: per member
    (fold, seed, checkpoint); ``details``: more ``model.json`` keys (CV metrics, training data, source)."""
    out.mkdir(parents=True, exist_ok=True)
    hp = {k: _plain(v) for k, v in next(iter(members.values())).hparams.items()}
    entries = []
    for name, classifier in members.items():
        weights = out / f"{name}.safetensors"
        # the model's weights and class offsets; not the training loss's buffers (focal alpha), which the
        # bundle's classifier (built without a loss alpha) does not have
        state = {k: v.contiguous() for k, v in classifier.state_dict().items() if not k.startswith("criterion.")}
        save_file(state, str(weights))
        weights.chmod(0o644)  # safetensors writes owner-only; a bundle is for sharing
        entry = {"name": name, "weights": weights.name, "sha256": sha256(weights), **(provenance or {}).get(name, {})}
        entry |= calibration_entry(classifier)
        if onnx:
            from skintumor.deploy.onnx import export_onnx  # onnx is only needed when asked for
            from skintumor.models.module import DecisionPath

            graph = export_onnx(DecisionPath(classifier).eval(), out / f"{name}.onnx", int(hp["image_size"]))
            entry |= {"onnx": graph.name, "onnx_sha256": sha256(graph)}
        entries.append(entry)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(hp["classes"]),
        "preprocessing": {
            "image_size": int(hp["image_size"]),
            "mean": float(hp["mean"]),
            "std": float(hp["std"]),
            "scan_area_crop": bool(scan_area_crop),
            "channels": 1,
            "grey": "ITU-R 601 luma of colour images, scaled by the file's bit depth (DICOM: BitsStored)",
            "resize": "stretched to image_size x image_size, cv2.INTER_AREA",
            "normalise": "(x / 255 - mean) / std",
        },
        "classifier": {k: hp[k] for k in CLASSIFIER_KEYS if k in hp}
        | {"net": hp["net"] | {"pretrained": False, "weights_path": None}},
        "decision": {
            "rule": hp["decision"],
            "tta": hp["tta"],
            "ensemble": "mean over members of each member's probabilities (with its own class offsets)",
        },
        "members": entries,
        "intended_use": INTENDED_USE,
        "software": {"skintumor": skintumor.__version__, "git_commit": _git_commit(), "torch": torch.__version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    } | (details or {})
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle; every weights file is checked against its SHA-256 before it is read."""
    path = Path(path)
    meta_file = path / MODEL_JSON
    if not meta_file.is_file():
        raise DataError(f"{meta_file}: not found (is {path} a model bundle? `skintumor export` writes one)")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{meta_file}: not readable JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_file}: not a skintumor model bundle (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{meta_file}: bundle format version {meta.get('format_version')} (this version reads {FORMAT_VERSION})"
        )
    try:
        members = [_load_member(path, entry, meta) for entry in meta["members"]]
        if not members:
            raise KeyError("members")
    except (KeyError, TypeError) as err:
        raise DataError(f"{meta_file}: incomplete bundle description (missing {err})") from None
    return Bundle(path, meta, members)


def _load_member(path: Path, entry: dict, meta: dict) -> Member:
    weights = path / entry["weights"]
    _verify(weights, entry["sha256"])
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise DataError(f"{weights}: not a readable safetensors file ({err})") from None
    classifier = SkinTumorClassifier(**meta["classifier"], loss={"alpha": None})
    try:
        classifier.load_state_dict(fill_default_buffers(state, len(meta["classes"])))  # older bundles lack some
    except RuntimeError as err:
        raise DataError(f"{weights}: weights do not fit the bundle's network ({str(err).splitlines()[0]})") from None
    onnx = None
    if entry.get("onnx"):
        onnx = path / entry["onnx"]
        _verify(onnx, entry["onnx_sha256"])
    return Member(entry["name"], classifier.eval(), onnx)


def calibration_entry(classifier: SkinTumorClassifier) -> dict:
    """A member's temperature and conformal (LAC) thresholds, set on its validation split, for ``model.json``
    (for reading: the weights file carries them as buffers). No thresholds: none were set."""
    entry = {"temperature": float(classifier.temperature)}
    if classifier.conformal_thresholds.any():
        entry["conformal_thresholds"] = {
            f"{c:g}": float(t) for c, t in zip(COVERAGES, classifier.conformal_thresholds.tolist())
        }
    return entry


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: not found (the bundle's model.json names it)")
    if sha256(path) != expected:
        raise DataError(
            f"{path}: checksum differs from model.json (changed, truncated or replaced); refusing to load it"
        )


def _contract(run: FinishedRun) -> dict:
    """What every member of one bundle must share."""
    hp = run.classifier.hparams
    return {
        "classes": list(hp["classes"]),
        "image_size": int(hp["image_size"]),
        "mean": float(hp["mean"]),
        "std": float(hp["std"]),
        "scan_area_crop": run.cropped,
    }


def _provenance(run: FinishedRun) -> dict:
    """Fold, seed and checkpoint of a member, from its run directory."""
    split = json.loads((run.path / "split.json").read_text())
    return {"fold": split.get("fold"), "data_seed": split.get("seed"), "checkpoint": run.checkpoint}


def _cv_metrics(source: Path) -> dict | None:
    """The sweep report's pooled metrics with CIs (``metrics_cv.json``; an ensemble's own), if any."""
    for candidate in (source / "ensemble" / "metrics_cv.json", source / "metrics_cv.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def _training_data(run: FinishedRun) -> dict:
    """What the first member learned from: the manifest's hash and counts (rows of every part)."""
    table = run.manifest.table
    return {
        "manifest_sha256": sha256(run.path / "manifest.csv"),
        "images": len(table),
        "patients": int(table["patient_id"].nunique()),
        "images_per_class": {c: int((table["label"] == c).sum()) for c in run.manifest.classes},
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _plain(value):
    """Hyper-parameters as JSON data (Lightning keeps them as AttributeDicts)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
