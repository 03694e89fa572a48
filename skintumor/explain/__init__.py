"""Explanations that can be checked: CAMs, attention maps, agreement with physicians' findings, faithfulness.

python -m skintumor.explain RUN_DIR      # writes RUN_DIR/explain/ (see skintumor.explain.run)
"""

from skintumor.explain.cam import METHODS, LogitsOnly, branch_cam, branch_contributions, explain_batch, gradient_cam
from skintumor.explain.run import ExplainSettings, explain_run

__all__ = [
    "METHODS",
    "LogitsOnly",
    "branch_cam",
    "branch_contributions",
    "explain_batch",
    "gradient_cam",
    "ExplainSettings",
    "explain_run",
]
