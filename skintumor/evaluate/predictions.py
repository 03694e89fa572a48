"""The test-prediction file of a run: one row per test image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skintumor.data.manifest import Manifest


def predictions_table(
    manifest: Manifest, rows: np.ndarray, probs: np.ndarray, scores: np.ndarray | None = None
) -> pd.DataFrame:
    """Columns ``path, patient_id, group_id, label, p_<class>..., pred`` (+ ``score_<class>...``).

    ``p_`` are the probabilities the decision ``pred = argmax(p_)`` is made with; ``score_`` (when
    given) the network's probabilities before the class offsets moved the decision, which AUROC
    and ROC curves rank. Shapes: rows (N,), probs and scores (N, C), C = len(manifest.classes).
    """
    table = manifest.table.iloc[rows][["path", "patient_id", "group_id", "label"]].reset_index(drop=True)
    for i, name in enumerate(manifest.classes):
        table[f"p_{name}"] = probs[:, i]
    table["pred"] = [manifest.classes[i] for i in probs.argmax(axis=1)]
    if scores is not None:
        for i, name in enumerate(manifest.classes):
            table[f"score_{name}"] = scores[:, i]
    return table


def write_predictions(
    manifest: Manifest, rows: np.ndarray, probs: np.ndarray, path: str | Path, scores: np.ndarray | None = None
) -> Path:
    path = Path(path)
    predictions_table(manifest, rows, probs, scores).to_csv(path, index=False, float_format="%.6f")
    return path
