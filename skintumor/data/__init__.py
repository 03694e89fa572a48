"""Data: manifests from every source, patient-grouped folds, the Lightning data module."""

from skintumor.data.manifest import Manifest
from skintumor.errors import DataError

__all__ = ["DataError", "Manifest"]
