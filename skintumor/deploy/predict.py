"""The one inference path: scan files -> preprocessing -> every member -> ensemble -> decision -> maps.

    predictor = Predictor(load_bundle("model/"))
    results = predictor.predict_files(collect_inputs(["scans/"]))          # one Prediction per file
    write_predictions(results, predictor.classes, "preds.csv")

Preprocessing is training's own (:func:`skintumor.data.images.read_greyscale`, the scan-area crop
when the bundle was trained with it, :func:`skintumor.data.datamodule.resize_pair`,
:func:`skintumor.data.datamodule.to_tensor`), so a bundle predicts a run's test images exactly as
the run scored them. Each member decides with its own class offsets (its
:class:`~skintumor.models.module.DecisionPath`, in torch or ONNX Runtime); the ensemble's
probabilities are the members' mean, and their standard deviation says how much they agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam.utils.image import scale_cam_image

from skintumor.data.datamodule import resize_pair, to_tensor
from skintumor.data.dicom import is_dicom
from skintumor.data.images import IMAGE_SUFFIXES, read_greyscale
from skintumor.data.manifest import read_user_csv
from skintumor.data.scan_area import crop_scan_area
from skintumor.deploy.bundle import Bundle
from skintumor.errors import ConfigError, DataError
from skintumor.evaluate.conformal import COVERAGES, prediction_sets, set_names
from skintumor.explain.cam import gradient_cam, normalise
from skintumor.models.module import DecisionPath

BACKENDS = ("torch", "onnx")


@dataclass
class Input:
    """One scan to predict: its file, and its class and patient when a labelled manifest says so."""

    path: Path
    label: str | None = None
    patient_id: str | None = None


@dataclass
class Prediction:
    """What predict says about one input. probs: (C,) the ensemble's mean probabilities (the decision
    is their argmax); spread: (C,) their standard deviation over members (0 for one member); scores:
    (C,) the mean probabilities before class offsets (what AUROC ranks); cam: (H, W) in [0, 1] when
    asked for; image: the preprocessed (H, W) uint8 scan the network saw; sets: conformal prediction
    sets, ``{"set_90": "lipoma or cyst", "set_95": ...}``, when the bundle has thresholds (else None).
    status "ok" or "error"."""

    input: Input
    status: str = "ok"
    message: str = ""
    probs: np.ndarray | None = None
    spread: np.ndarray | None = None
    scores: np.ndarray | None = None
    pred: str | None = None
    image: np.ndarray | None = None
    cam: np.ndarray | None = None
    sets: dict[str, str] | None = None


def collect_inputs(items: Iterable[str | Path], classes: list[str] | None = None) -> list[Input]:
    """Image files, DICOM files, folders (searched recursively) and CSV manifests -> the inputs.

    A CSV needs a ``path`` column (relative to the CSV's folder); ``label`` and ``patient_id`` are
    used when present. In a folder, a file inside a sub-folder named after one of ``classes`` gets
    that label (the ``<class>/<image>`` layout of training data). A path that does not exist is a
    DataError; files in folders that are neither images nor DICOM are skipped.
    """
    inputs: list[Input] = []
    for item in items:
        path = Path(item).expanduser()
        if path.suffix.lower() == ".csv" and path.is_file():
            inputs += _manifest_inputs(path)
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix.lower() in IMAGE_SUFFIXES or is_dicom(file):
                    label = file.parent.name if classes and file.parent.name in classes else None
                    inputs.append(Input(file, label))
        elif path.exists():
            inputs.append(Input(path))
        else:
            raise DataError(f"{path}: no such file or folder")
    if not inputs:
        raise DataError(f"no images found in {', '.join(map(str, items))}")
    return inputs


def _manifest_inputs(csv_path: Path) -> list[Input]:
    table = read_user_csv(csv_path, "manifest CSV")
    if "path" not in table.columns:
        raise DataError(f"{csv_path}: manifest has no 'path' column (columns: {', '.join(table.columns)})")
    root = csv_path.parent
    return [
        Input(root / row["path"], row.get("label") or None, row.get("patient_id") or None)
        for _, row in table.iterrows()
    ]


class Predictor:
    """A loaded bundle, ready to predict: ``backend`` torch (CPU or CUDA) or onnx (ONNX Runtime)."""

    def __init__(self, bundle: Bundle, backend: str = "torch", device: str = "cpu"):
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "onnx" and any(m.onnx is None for m in bundle.members):
            raise DataError(f"{bundle.path}: has no ONNX graphs; export it again with --onnx, or use --backend torch")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda: no CUDA device is available here")
        self.bundle, self.backend, self.device = bundle, backend, torch.device(device)
        self.classes = bundle.classes
        pre = bundle.preprocessing
        self.size, self.mean, self.std, self.crop = (
            int(pre["image_size"]),
            pre["mean"],
            pre["std"],
            pre["scan_area_crop"],
        )
        self.paths = [DecisionPath(m.classifier).to(self.device).eval() for m in bundle.members]
        thresholds = np.stack([m.classifier.conformal_thresholds.numpy() for m in bundle.members])
        # the members' mean LAC threshold on the ensemble's mean scores (exact for one member; for an
        # ensemble of fold models an approximation: each threshold was calibrated for its own member)
        self.conformal = thresholds.mean(0) if (thresholds > 0).all() else None
        for path in self.paths:  # inference only: Grad-CAM needs gradients of layer4 alone, not the whole trunk
            path.net.requires_grad_(False).layer4.requires_grad_(True)
        if backend == "onnx":
            from skintumor.deploy.onnx import OnnxMember  # onnxruntime is only needed for this backend

            self.sessions = [OnnxMember(m.onnx) for m in bundle.members]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """(H, W) uint8 scan -> what the network sees: (size, size) uint8 and (1, size, size) float."""
        if self.crop:
            image = crop_scan_area(image)[0]
        resized, _ = resize_pair(image, None, self.size)
        return resized, to_tensor(resized, self.mean, self.std)

    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 1, H, W) preprocessed -> every member's decided probabilities and scores, each (M, B, C)."""
        if self.backend == "onnx":
            outputs = [session(x.numpy()) for session in self.sessions]
        else:
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            outputs = [tuple(t.float().cpu().numpy() for t in path(x)) for path in self.paths]
        probs, scores = zip(*outputs)
        return np.stack(probs), np.stack(scores)

    def cam(self, x: torch.Tensor, targets: list[int]) -> np.ndarray:
        """Grad-CAM of each image's ``targets`` class (explain's gallery map), the members' mean -> (B, H, W)."""
        x = x.to(self.device)
        maps = [gradient_cam(path.net, x, targets, "gradcam") for path in self.paths]
        return np.mean(maps, axis=0)

    def predict_and_explain(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict_batch` and :meth:`cam` of the ensemble's decision, with one forward pass of
        ``x`` per member instead of two: the pass that decides also keeps layer4's activations for
        Grad-CAM (the same map as pytorch-grad-cam's, written out because the library runs its own
        forward pass). -> probs, scores (M, B, C) and maps (B, H, W) in [0, 1]."""
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        passes = []
        for path in self.paths:
            kept = {}
            hook = path.net.layer4.register_forward_hook(lambda _m, _i, out, kept=kept: kept.update(a=out))
            try:
                with torch.enable_grad():
                    logits = path.net(x)
            finally:
                hook.remove()
            with torch.no_grad():
                probs, scores = path.decide(logits.detach(), x)
            passes.append((logits, kept["a"], probs.float().cpu().numpy(), scores.float().cpu().numpy()))
        probs, scores = np.stack([p[2] for p in passes]), np.stack([p[3] for p in passes])
        targets = torch.as_tensor(probs.mean(axis=0).argmax(axis=1), device=x.device)
        maps = []
        for logits, activations, _, _ in passes:
            (grads,) = torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), activations)
            cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1))
            maps.append(
                normalise(scale_cam_image(scale_cam_image(cam.detach().float().cpu().numpy(), x.shape[:-3:-1])))
            )
        return probs, scores, np.mean(maps, axis=0)

    def predict_images(
        self, images: list[np.ndarray], cam: bool = False, inputs: list[Input] | None = None
    ) -> list[Prediction]:
        """Decoded scans ((H, W) uint8, as :func:`read_greyscale` gives them) -> one Prediction each,
        in one batch. The step every caller shares: :meth:`predict_files` after reading its files, the
        web page (``skintumor serve``) after decoding its uploads. ``inputs`` names the images (default
        ``image_<i>``); an image preprocessing refuses gets status "error" and the rest still run."""
        if inputs is None:
            inputs = [Input(Path(f"image_{i}")) for i in range(len(images))]
        if len(inputs) != len(images):
            raise ValueError(f"predict_images: {len(images)} images but {len(inputs)} inputs")
        results = [Prediction(item) for item in inputs]
        tensors = []
        for result, image in zip(results, images):
            try:
                result.image, tensor = self.preprocess(image)
                tensors.append(tensor)
            except DataError as err:
                result.status, result.message = "error", str(err)
        readable = [r for r in results if r.status == "ok"]
        if readable:
            x = torch.stack(tensors)
            if cam and self.backend == "torch":  # one forward pass decides and explains
                probs, scores, maps = self.predict_and_explain(x)
            else:
                probs, scores = self.predict_batch(x)
                maps = self.cam(x, probs.mean(axis=0).argmax(axis=1).tolist()) if cam else [None] * len(readable)
            mean = probs.mean(axis=0)
            for i, result in enumerate(readable):
                result.probs, result.spread = mean[i], probs[:, i].std(axis=0)
                result.scores, result.pred = scores[:, i].mean(axis=0), self.classes[int(mean[i].argmax())]
                result.cam = maps[i]
                result.sets = self.prediction_sets(result.scores)
        return results

    def prediction_sets(self, scores: np.ndarray) -> dict[str, str] | None:
        """Conformal (LAC) sets of one image's scores (C,) at 90 % and 95 % coverage; None without thresholds."""
        if self.conformal is None:
            return None
        return {
            f"set_{round(100 * c)}": set_names(prediction_sets(scores[None], t), self.classes)[0]
            for c, t in zip(COVERAGES, self.conformal)
        }

    def predict_files(
        self, inputs: list[Input], batch_size: int = 32, cam: bool = False, progress: bool = True
    ) -> list[Prediction]:
        """Predict every input; an unreadable file gets status "error" and the rest still run."""
        results: list[Prediction] = []
        with _progress(len(inputs), progress) as advance:
            for batch in _chunks(inputs, batch_size):
                images, read, failed = [], [], {}
                for i, item in enumerate(batch):
                    try:
                        images.append(read_greyscale(item.path))
                        read.append(item)
                    except DataError as err:
                        failed[i] = Prediction(item, "error", str(err))
                predicted = iter(self.predict_images(images, cam, read) if read else [])
                results += [failed[i] if i in failed else next(predicted) for i in range(len(batch))]
                advance(len(batch))
        return results


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _progress:
    """A rich progress bar over the inputs (nothing when ``enabled`` is False)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled and total > 1, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("predicting", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def predictions_table(results: list[Prediction], classes: list[str]) -> pd.DataFrame:
    """One row per input: ``path, status, pred, [set_90, set_95], p_<class>..., sd_<class>...,
    score_<class>..., [label], message`` (probabilities empty for a failed input; the conformal sets
    when the bundle has thresholds)."""
    rows = []
    with_sets = [k for k in next((r.sets for r in results if r.sets), {})]
    for r in results:
        row = {"path": str(r.input.path), "status": r.status, "pred": r.pred or ""}
        row |= {k: (r.sets or {}).get(k, "") for k in with_sets}
        for kind, values in (("p", r.probs), ("sd", r.spread), ("score", r.scores)):
            row |= {f"{kind}_{c}": (float(values[i]) if values is not None else np.nan) for i, c in enumerate(classes)}
        if any(x.input.label for x in results):
            row["label"] = r.input.label or ""
        row["message"] = r.message
        rows.append(row)
    return pd.DataFrame(rows)


def write_predictions(results: list[Prediction], classes: list[str], out: str | Path) -> Path:
    """``out`` as CSV (``.csv``) or JSON records (``.json``); never replaces an existing file."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise DataError(f"{out}: the predictions file must end in .csv or .json")
    if out.exists():
        raise DataError(f"{out}: already exists; predictions never overwrite a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    table = predictions_table(results, classes)
    if out.suffix.lower() == ".csv":
        table.to_csv(out, index=False, float_format="%.6f")
    else:
        out.write_text(json.dumps(json.loads(table.to_json(orient="records")), indent=2) + "\n")
    return out


def labelled_metrics(results: list[Prediction], classes: list[str], n_boot: int = 2000) -> dict | None:
    """External validation: metrics with patient-bootstrap 95 % CIs over the inputs that have a known
    label and were read (patients: the manifest's ``patient_id``, else one per image); None without labels."""
    from skintumor.evaluate.metrics import confidence_intervals

    known = [r for r in results if r.status == "ok" and r.input.label in classes]
    if not known:
        return None
    y = np.array([classes.index(r.input.label) for r in known])
    probs, scores = np.stack([r.probs for r in known]), np.stack([r.scores for r in known])
    clusters = [r.input.patient_id or str(r.input.path) for r in known]
    return confidence_intervals(y, probs, clusters, classes, n_boot=n_boot, scores=scores)
