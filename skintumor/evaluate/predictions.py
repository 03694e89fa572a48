"""The test-prediction file of a run: one row per test image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skintumor.data.manifest import Manifest


def predictions_table(manifest: Manifest, rows: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Columns ``path, patient_id, group_id, label, p_<class>..., pred`` for manifest ``rows``.

    Shapes: rows (N,), probs (N, C) with C = len(manifest.classes).
    """
    table = manifest.table.iloc[rows][["path", "patient_id", "group_id", "label"]].reset_index(drop=True)
    for i, name in enumerate(manifest.classes):
        table[f"p_{name}"] = probs[:, i]
    table["pred"] = [manifest.classes[i] for i in probs.argmax(axis=1)]
    return table


def write_predictions(manifest: Manifest, rows: np.ndarray, probs: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    predictions_table(manifest, rows, probs).to_csv(path, index=False, float_format="%.6f")
    return path
