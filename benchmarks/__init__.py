"""Maintained benchmarks, each run as ``python -m benchmarks.NAME [--quick] [--out DIR]``:
throughput, inference, augment_cost, phantom_difficulty, cv_busi, explain_agreement, explain_speed,
serve_load, gpu_smoke, dedup_threshold. Shared helpers live in :mod:`benchmarks.common`; figures and
commands in docs/results.md."""
