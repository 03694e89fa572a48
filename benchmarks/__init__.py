"""Maintained benchmarks, each run as ``python -m benchmarks.NAME [--quick] [--out DIR]``:
throughput, augment_cost, phantom_difficulty, cv_busi, explain_agreement, gpu_smoke, inference.
Shared helpers live in :mod:`benchmarks.common`; figures and commands in docs/history/recipe-search.md."""
