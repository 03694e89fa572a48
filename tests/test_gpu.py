"""On a CUDA machine: the shipped GPU settings train and predict. Skipped cleanly without one
(``requires_gpus``); `make test` on a lent GPU machine runs them."""

from conftest import requires_gpus, run_train, tiny_overrides


@requires_gpus(1)
def test_recipe_trains_with_bf16_and_channels_last_on_one_gpu(masked_manifest, tmp_path):
    overrides = [o for o in tiny_overrides(masked_manifest) if o != "trainer.accelerator=cpu"]
    proc = run_train(*overrides, "trainer=gpu", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r" / "predictions_test.csv").is_file()


@requires_gpus(1)
def test_predict_runs_on_cuda_as_on_the_cpu(tiny_run, tmp_path):
    import json
    from pathlib import Path

    import numpy as np

    from skintumor.deploy.bundle import export_bundle, load_bundle
    from skintumor.deploy.predict import Predictor, collect_inputs

    split = json.loads((tiny_run / "split.json").read_text())
    bundle = load_bundle(export_bundle(tiny_run, tmp_path / "model"))
    inputs = [i for i in collect_inputs([Path(split["root"])]) if not i.path.stem.endswith("_mask")]
    cpu = Predictor(bundle).predict_files(inputs, progress=False)
    cuda = Predictor(bundle, device="cuda").predict_files(inputs, cam=True, progress=False)
    assert max(np.abs(a.probs - b.probs).max() for a, b in zip(cpu, cuda)) < 1e-3
    assert all(r.cam is not None for r in cuda)
