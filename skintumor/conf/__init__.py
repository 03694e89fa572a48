"""Hydra configs (train.yaml, search.yaml and their groups), shipped in the package.

Hydra reads them as ``pkg://skintumor.conf`` when ``skintumor.train:main`` runs as an entry point; that
source only counts a directory with an ``__init__.py`` as available.
"""
