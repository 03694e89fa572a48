"""Data: manifests from every source, patient-grouped folds, the Lightning data module."""
from skintumor.data.manifest import DataError, Manifest

__all__ = ["DataError", "Manifest"]
