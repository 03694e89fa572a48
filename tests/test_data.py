import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skintumor.data.datamodule import UltrasoundDataModule
from skintumor.data.images import read_greyscale
from skintumor.data.manifest import Manifest
from skintumor.data.sources import csv_manifest, folder_manifest
from skintumor.errors import DataError

from conftest import snapshot, write_class_folders


def test_folder_source_reads_classes_and_patients(tiny_folder):
    m = folder_manifest(tiny_folder, patients_csv=tiny_folder / "patients.csv")
    assert m.classes == ["cyst", "lipoma", "pilomatricoma"]
    assert len(m) == 36 and m.table["patient_id"].nunique() == 18
    assert (m.table["group_id"] == m.table["patient_id"]).all()


def test_groups_that_share_a_patient_are_joined(tmp_path):
    """One group per lesion would put one patient on both sides of a split: such groups are joined."""
    table = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(5)],
            "label": ["cyst"] * 5,
            "patient_id": ["P1", "P1", "P2", "P3", "P3"],
            "group_id": ["L1", "L2", "L3", "L4", "L4"],
        }
    )
    with pytest.warns(UserWarning, match=r"1 patient\(s\) have images in more than one group_id \(e.g. P1: L1, L2\)"):
        m = Manifest(table, tmp_path)
    assert list(m.table["group_id"]) == ["L1", "L1", "L3", "L4", "L4"]
    assert list(table["group_id"]) == ["L1", "L2", "L3", "L4", "L4"]  # the caller's table is not changed
    # a chain: P4 in groups A and B, P5 in groups B and C -> one group
    chain = pd.DataFrame(
        {
            "path": ["a.png", "b.png", "c.png", "d.png"],
            "label": ["cyst"] * 4,
            "patient_id": ["P4", "P4", "P5", "P5"],
            "group_id": ["A", "B", "B", "C"],
        }
    )
    with pytest.warns(UserWarning, match="2 patient"):
        assert set(Manifest(chain, tmp_path).table["group_id"]) == {"A"}


def test_folder_without_patients_warns_one_patient_per_image(tiny_folder):
    with pytest.warns(UserWarning, match="own patient"):
        m = folder_manifest(tiny_folder)
    assert m.table["patient_id"].nunique() == len(m)


def test_missing_root_and_empty_class_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        folder_manifest(tmp_path / "nope")
    (tmp_path / "cyst").mkdir()
    with pytest.raises(DataError, match=r"cyst: class folder has no images"):
        folder_manifest(tmp_path)


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "empty"), (b"not an image at all", "not a readable image"), (None, "not a readable image")],
)
def test_bad_image_file_names_the_file(tmp_path, content, problem):
    path = tmp_path / "scan.png"
    if content is None:  # truncated PNG
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"scan.png: .*{problem}"):
        read_greyscale(path)


def test_csv_unknown_class_missing_column_and_escaping_path(tiny_folder, tmp_path):
    csv = tmp_path / "m.csv"
    pd.DataFrame({"path": ["cyst/cyst0_0.png"], "label": ["cyst"]}).to_csv(csv, index=False)
    with pytest.warns(UserWarning, match="no patient_id"):
        csv_manifest(root=tiny_folder, manifest=csv)
    pd.DataFrame({"path": ["cyst/cyst0_0.png"], "patient": ["p"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="missing column.*label"):
        csv_manifest(root=tiny_folder, manifest=csv)
    pd.DataFrame({"path": ["cyst/cyst0_0.png"], "label": ["melanoma"], "patient_id": ["p"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="unknown class 'melanoma'"):
        csv_manifest(root=tiny_folder, manifest=csv, classes=["cyst", "lipoma", "pilomatricoma"])
    pd.DataFrame({"path": ["../etc/passwd"], "label": ["cyst"], "patient_id": ["p"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="outside the data root"):
        csv_manifest(root=tiny_folder, manifest=csv)


def test_patient_with_two_classes_warns_and_stays_whole(tmp_path):
    root = write_class_folders(tmp_path / "d", patients_per_class=6)
    table = folder_manifest(root, patients_csv=root / "patients.csv").table.copy()
    table.loc[table["path"] == "lipoma/lipoma0_0.png", "patient_id"] = "cyst-P0"  # one patient, two classes
    table["group_id"] = table["patient_id"]
    dm = UltrasoundDataModule(manifest=Manifest(table, root), image_size=32, n_folds=3)
    with pytest.warns(UserWarning, match="more than one class"):
        dm.setup()
    parts = [set(np.asarray(dm.manifest.groups)[getattr(dm.split, p)]) for p in ("train", "val", "test")]
    assert sum("cyst-P0" in p for p in parts) == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_batches_and_leaves_user_data_untouched(tiny_folder, num_workers):
    before = snapshot(tiny_folder)
    dm = UltrasoundDataModule(
        source="folder",
        root=str(tiny_folder),
        options={"patients_csv": str(tiny_folder / "patients.csv")},
        image_size=32,
        batch_size=4,
        n_folds=3,
        num_workers=num_workers,
    )
    dm.setup()
    x, y, rows = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (4,) and rows.shape == (4,)
    assert set(rows.tolist()) <= set(dm.split.train.tolist())
    test_rows = torch.cat([b[2] for b in dm.test_dataloader()])
    assert sorted(test_rows.tolist()) == dm.split.test.tolist()
    assert snapshot(tiny_folder) == before


def test_nested_datamodule_tests_on_a_part_no_ordinary_run_validates_on(tiny_folder, tmp_path):
    """data.nested=true: the test loader serves the training part's last inner fold, never the test fold and
    never the ordinary validation split (inner fold 0, where recipes are chosen); split.json records it."""
    kwargs = dict(
        source="folder",
        root=str(tiny_folder),
        options={"patients_csv": str(tiny_folder / "patients.csv")},
        image_size=32,
        batch_size=4,
        n_folds=3,
        val_fraction=0.25,
    )
    plain, nested = UltrasoundDataModule(**kwargs), UltrasoundDataModule(**kwargs, nested=True)
    plain.setup(), nested.setup()
    test_rows = torch.cat([b[2] for b in nested.test_dataloader()])
    last = UltrasoundDataModule(**kwargs, inner_fold=3)  # val_fraction 0.25: inner folds 0..3
    last.setup()
    assert sorted(test_rows.tolist()) == last.split.val.tolist()
    assert not set(test_rows.tolist()) & set(plain.split.val.tolist())  # the usual validation split stays out
    assert not set(nested.split.train.tolist()) & set(plain.split.test.tolist())
    assert not set(test_rows.tolist()) & set(plain.split.test.tolist())
    nested.write_split(tmp_path)
    assert '"nested": true' in (tmp_path / "split.json").read_text()


def test_csv_paths_may_start_with_the_home_folder(tmp_path, monkeypatch):
    """``data.options.manifest=~/scans/m.csv``: Hydra passes ``~`` through, the reader expands it."""
    folder = write_class_folders(tmp_path / "scans", patients_per_class=1, images_per_patient=1)
    monkeypatch.setenv("HOME", str(tmp_path))
    rows = ["path,label,patient_id"] + [f"{c}/{c}0_0.png,{c},{c}-0" for c in ("cyst", "lipoma", "pilomatricoma")]
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    manifest = Manifest.from_csv("~/scans/m.csv")
    assert len(manifest) == 3 and manifest.root == folder
