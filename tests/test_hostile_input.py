"""Hostile input, end to end: every command that reads a user's input (data check, train, report,
explain, export, predict) answers bad input with one clear line naming the file or setting and the
problem, an exit code other than 0, no traceback, and not one of the user's files changed; a pickle
that would run code never runs through any entry point.

Most cases run the entry point's own ``main`` in this process (the same code as the command, without
the seconds of a new interpreter); ``test_a_real_process_...`` runs one case per command as a real
process, so the exit codes and the absence of tracebacks hold outside pytest too."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, REPO, write_class_folders, write_masked_manifest

CONF = REPO / "conf"
ERROR_LINE = re.compile(r"^(data error|config error|weights error|error): ")


# ------------------------------------------------------------------------------------- the inputs


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A valid black RGB PNG of width x height px, written without holding its pixels: one compressed
    block of rows repeated (deflate blocks ended by a full flush can follow each other), so a
    12000 x 12000 image (432 MB decoded) costs a fraction of a second and 2 MB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = next(r for r in (500, 400, 300, 200, 100, 50, 10, 1) if height % r == 0)
    block = b"\0" * ((1 + 3 * width) * rows)  # each row: filter byte 0, then RGB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows):
        adler = zlib.adler32(block, adler)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    stream = b"\x78\xda" + piece * (height // rows) + end + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bit, RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path


class RunsCode:
    """Unpickling this writes ``marker``: what a malicious checkpoint or weights file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the pickle ran')",)


def write_code_pickle(path: Path, marker: Path, fmt: str) -> Path:
    """``fmt`` "torch": torch.save's zip of a checkpoint-like dict; "pickle": a bare pickle stream."""
    if fmt == "torch":
        torch.save({"state_dict": RunsCode(marker), "hyper_parameters": {"classes": list(CLASSES)}}, path)
    else:
        path.write_bytes(pickle.dumps(RunsCode(marker)))
    return path


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes (added or removed files show too)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """What the cases copy into their user folder: class folders (3 x 6 patients x 2 views of 40x48 px),
    a 12000 x 12000 RGB PNG, a finished run (written directly: an untrained network, since no case
    gets past reading it) and its model bundle."""
    from skintumor.data.datamodule import UltrasoundDataModule
    from skintumor.deploy.bundle import export_bundle
    from skintumor.models.module import SkinTumorClassifier

    base = tmp_path_factory.mktemp("hostile")
    folders = write_class_folders(base / "folders")
    big = write_blank_png(base / "big.png", 12000, 12000)
    (base / "masked").mkdir()
    manifest = write_masked_manifest(base / "masked")
    datamodule = UltrasoundDataModule(source="csv", options={"manifest": str(manifest)}, image_size=32, n_folds=3)
    datamodule.setup()
    run = base / "run"
    (run / "checkpoints").mkdir(parents=True)
    datamodule.write_split(run)
    classifier = SkinTumorClassifier(list(CLASSES), class_counts=datamodule.class_counts(), image_size=32)
    hyper_parameters = json.loads(json.dumps(dict(classifier.hparams)))  # plain data, as training saves them
    torch.save(
        {"state_dict": classifier.state_dict(), "hyper_parameters": hyper_parameters}, run / "checkpoints" / "best.ckpt"
    )
    (run / "metrics_val.json").write_text(json.dumps({"checkpoint": "checkpoints/best.ckpt"}))
    bundle = export_bundle(run, base / "bundle")
    return {"folders": folders, "big": big, "masked": manifest.parent, "run": run, "bundle": bundle}


# ------------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """``command`` (check, train, explain, export, predict, report) is given ``make(user, shared)``'s
    arguments (Hydra overrides for train); its one error line must contain every string of ``expect``,
    and ``marker`` (relative to the user folder) must never exist."""

    command: str
    make: Callable[[Path, dict], list[str]]
    expect: tuple[str, ...]
    code: int | None = None  # the exit code, when one is specified (else any but 0)
    marker: str | None = None
    absent: tuple[str, ...] = field(default_factory=tuple)  # strings the output must not contain


def folders(user: Path, shared: dict, name: str = "data") -> Path:
    return Path(shutil.copytree(shared["folders"], user / name))


def masked(user: Path, shared: dict) -> Path:
    return Path(shutil.copytree(shared["masked"], user / "masked")) / "manifest.csv"


def train_args(data: Path, *more: str) -> list[str]:
    return [
        "data=folder",
        f"data.root={data}",
        f"data.options.patients_csv={data / 'patients.csv'}",
        "data.image_size=32",
        "data.n_folds=3",
        "debug=fdr",
        *more,
    ]


def bad_bytes(user, shared):
    data = folders(user, shared)
    (data / "cyst" / "notes.png").write_bytes(b"not an image at all")
    return data


def truncated_png(user, shared):
    data = folders(user, shared)
    path = data / "lipoma" / "cut.png"
    Image.fromarray(np.full((40, 48), 90, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:50])
    return data


def huge_png(user, shared):
    data = folders(user, shared)
    shutil.copy(shared["big"], data / "cyst" / "big.png")
    return data


def single_class(user, shared):
    data = user / "data"
    shutil.copytree(shared["folders"] / "cyst", data / "cyst")
    shutil.copy(shared["folders"] / "patients.csv", data)
    return data


def csv_file(user: Path, text: str) -> Path:
    (user / "m.csv").write_text(text)
    return user / "m.csv"


def repeated_row(user, shared):
    manifest = masked(user, shared)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[3]]) + "\n")  # row 4 again, as row 38
    return manifest


def wrong_size_mask(user, shared):
    manifest = masked(user, shared)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(manifest.parent / "lipoma2_1_mask.png")
    return manifest


def weights(user: Path, content) -> Path:
    path = user / "resnet18.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


def run_copy(user: Path, shared: dict) -> Path:
    return Path(shutil.copytree(shared["run"], user / "run"))


def run_without_net(user, shared):
    run = run_copy(user, shared)
    checkpoint = run / "checkpoints" / "best.ckpt"
    data = torch.load(checkpoint, weights_only=True)
    del data["hyper_parameters"]["net"]
    torch.save(data, checkpoint)
    return [str(run), "--out", str(user.parent / "explained")]


def unreadable_checkpoint(user, shared):
    run = run_copy(user, shared)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"\0" * 64)
    return [str(run), "--out", str(user.parent / "explained")]


def existing_out_file(user, shared):
    (user / "notes.txt").write_text("a user's notes\n")
    return [str(run_copy(user, shared)), "--out", str(user / "notes.txt")]


def code_pickle_run(user: Path, shared: dict, fmt: str) -> Path:
    run = run_copy(user, shared)
    write_code_pickle(run / "checkpoints" / "best.ckpt", user / "marker", fmt)
    return run


def code_pickle_bundle(user: Path, shared: dict, fmt: str) -> Path:
    """The bundle with its weights file replaced by a pickle and model.json's checksum updated to match,
    so that what refuses it is the loader itself, not the checksum."""
    from skintumor.deploy.bundle import sha256

    bundle = Path(shutil.copytree(shared["bundle"], user / "bundle"))
    meta = json.loads((bundle / "model.json").read_text())
    member = meta["members"][0]
    write_code_pickle(bundle / member["weights"], user / "marker", fmt)
    member["sha256"] = sha256(bundle / member["weights"])
    (bundle / "model.json").write_text(json.dumps(meta))
    return bundle


def scan(user: Path) -> Path:
    path = user / "scans" / "scan.png"
    path.parent.mkdir()
    Image.fromarray(np.full((40, 48), 90, np.uint8)).save(path)
    return path


CASES = {
    # -- python -m skintumor.data check: a bad file exits 1, a source that cannot be read 2
    "check-bad-image-bytes": Case(
        "check", lambda u, s: ["check", str(bad_bytes(u, s))], ("notes.png", "not a readable image"), 1
    ),
    "check-truncated-png": Case(
        "check", lambda u, s: ["check", str(truncated_png(u, s))], ("cut.png", "not a readable image"), 1
    ),
    "check-csv-columns": Case(
        "check",
        lambda u, s: ["check", str(csv_file(u, "path,patient_id\ncyst/a.png,P1\n"))],
        ("m.csv", "missing column(s) label"),
        2,
    ),
    "check-unknown-class": Case(
        "check",
        lambda u, s: [
            "check",
            str(csv_file(u, "path,label,patient_id\na.png,melanoma,P1\n")),
            "--classes",
            ",".join(CLASSES),
        ],
        ("m.csv", "unknown class 'melanoma'"),
        2,
    ),
    "check-path-outside-root": Case(
        "check",
        lambda u, s: ["check", str(csv_file(u, "path,label,patient_id\n../../etc/passwd,cyst,P1\n"))],
        ("m.csv", "'../../etc/passwd' points outside the data root"),
        2,
    ),
    "check-mask-size": Case(
        "check",
        lambda u, s: ["check", str(wrong_size_mask(u, s))],
        ("lipoma2_1_mask.png", "mask is 10x10 px but its image is 40x40 px"),
        1,
    ),
    "check-huge-image": Case(
        "check",
        lambda u, s: ["check", str(huge_png(u, s)), "--no-dedup"],
        ("big.png", "12000x12000 px (144 megapixels)", "50-megapixel limit"),
        1,
    ),
    "check-repeated-row": Case(
        "check",
        lambda u, s: ["check", str(repeated_row(u, s))],
        ("cyst1_0.png", "listed in 2 rows", "rows 4 and 38"),
        1,
    ),
    "check-single-class": Case(
        "check", lambda u, s: ["check", str(single_class(u, s))], ("every image is of class cyst", "two classes"), 1
    ),
    # -- python -m skintumor.train: every user error is one line, exit code 2
    "train-bad-image-bytes": Case(
        "train", lambda u, s: train_args(bad_bytes(u, s)), ("notes.png", "not a readable"), 2
    ),
    "train-huge-image": Case("train", lambda u, s: train_args(huge_png(u, s)), ("big.png", "12000x12000 px"), 2),
    "train-fold-out-of-range": Case(
        "train", lambda u, s: train_args(folders(u, s), "data.fold=5"), ("fold 5 does not exist", "0..2"), 2
    ),
    "train-unknown-option": Case(
        "train",
        lambda u, s: train_args(folders(u, s), "+data.options.patient_csv=p.csv"),
        ("data source 'folder' has no option patient_csv",),
        2,
    ),
    "train-bad-weights-file": Case(
        "train",
        lambda u, s: train_args(folders(u, s), f"model.net.weights_path={weights(u, b'not torch')}"),
        ("resnet18.pth", "not a readable weights file"),
        2,
    ),
    "train-weights-bare-tensor": Case(
        "train",
        lambda u, s: train_args(folders(u, s), f"model.net.weights_path={weights(u, torch.zeros(3))}"),
        ("resnet18.pth", "not a state dict of tensors"),
        2,
    ),
    "train-weights-of-another-shape": Case(
        "train",
        lambda u, s: train_args(
            folders(u, s), f"model.net.weights_path={weights(u, {'conv1.weight': torch.zeros(3)})}"
        ),
        ("resnet18.pth", "weights that do not fit this ResNet18", "conv1.weight"),
        2,
    ),
    "train-image-size-0": Case(
        "train",
        lambda u, s: train_args(folders(u, s), "data.image_size=0"),
        ("data.image_size=0", "32..4096 px", "a ResNet needs at least 32 px"),
        2,
    ),
    "train-image-size-8": Case(
        "train", lambda u, s: train_args(folders(u, s), "data.image_size=8"), ("data.image_size=8", "32..4096 px"), 2
    ),
    "train-batch-size-0": Case(
        "train", lambda u, s: train_args(folders(u, s), "data.batch_size=0"), ("data.batch_size=0", "at least 1"), 2
    ),
    "train-folder-without-root": Case(
        "train", lambda u, s: ["data=folder", "debug=fdr"], ("data=folder needs data.root=DIR",), 2
    ),
    "train-csv-without-manifest": Case(
        "train", lambda u, s: ["data=csv", "debug=fdr"], ("data=csv needs data.options.manifest=FILE.csv",), 2
    ),
    "train-fewer-groups-than-inner-folds": Case(
        "train",
        lambda u, s: train_args(folders(u, s), "data.n_folds=2", "data.val_fraction=0.1"),
        ("patient group(s), fewer than the 10 inner folds", "set data.val_fraction=0.1"),
        2,
        absent=("n_splits",),
    ),
    "train-single-class": Case(
        "train",
        lambda u, s: train_args(single_class(u, s)),
        ("every image is of class cyst", "at least two classes"),
        2,
    ),
    "train-class-names-not-numbers": Case(
        "train",
        lambda u, s: train_args(folders(u, s), "data.n_folds=7"),
        ("class cyst has only 6 patient group(s), fewer than the 7 outer folds",),
        2,
        absent=("class 0",),
    ),
    "train-repeated-row": Case(
        "train",
        lambda u, s: ["data=csv", f"data.options.manifest={repeated_row(u, s)}", "data.image_size=32", "debug=fdr"],
        ("cyst1_0.png", "listed in 2 rows"),
        2,
    ),
    # -- python -m skintumor.explain
    "explain-checkpoint-without-net": Case("explain", run_without_net, ("best.ckpt", "lack net"), 2),
    "explain-out-is-a-file": Case("explain", existing_out_file, ("notes.txt", "not a folder"), 2),
    "explain-unreadable-checkpoint": Case(
        "explain", unreadable_checkpoint, ("best.ckpt", "not a readable checkpoint"), 2
    ),
    # -- skintumor predict / report
    "predict-huge-image": Case(
        "predict",
        lambda u, s: [str(s["bundle"]), str(shutil.copy(s["big"], u / "big.png")), "--no-progress"],
        ("big.png", "12000x12000 px"),
        1,
    ),
    "report-not-a-sweep": Case("report", lambda u, s: [str(u)], ("no fold_<k> directories",), 2),
}
for fmt in ("torch", "pickle"):  # a pickle that would run code, through every entry point that loads weights
    CASES |= {
        f"train-weights-run-code-{fmt}": Case(
            "train",
            lambda u, s, fmt=fmt: train_args(
                folders(u, s), f"model.net.weights_path={write_code_pickle(u / 'evil.pt', u / 'marker', fmt)}"
            ),
            ("evil.pt", "not a readable weights file"),
            2,
            marker="marker",
        ),
        f"explain-checkpoint-run-code-{fmt}": Case(
            "explain",
            lambda u, s, fmt=fmt: [str(code_pickle_run(u, s, fmt)), "--out", str(u.parent / "x")],
            ("best.ckpt", "not a readable checkpoint"),
            2,
            marker="marker",
        ),
        f"export-checkpoint-run-code-{fmt}": Case(
            "export",
            lambda u, s, fmt=fmt: [str(code_pickle_run(u, s, fmt)), "--out", str(u.parent / "bundle")],
            ("best.ckpt", "not a readable checkpoint"),
            2,
            marker="marker",
        ),
        f"predict-bundle-run-code-{fmt}": Case(
            "predict",
            lambda u, s, fmt=fmt: [str(code_pickle_bundle(u, s, fmt)), str(scan(u)), "--no-progress"],
            ("run.safetensors", "not a readable safetensors file"),
            2,
            marker="marker",
        ),
    }


def run_in_process(command: str, args: list[str], out_dir: Path, capsys) -> tuple[int, str, str]:
    """The command's exit code, stdout and stderr, run by its own ``main`` in this process."""
    if command == "train":  # the Hydra entry point's body: train() inside its user-error handling
        from hydra import compose, initialize_config_dir

        from skintumor.cli import one_line_user_errors
        from skintumor.train import train

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*args, f"paths.output_dir={out_dir}"])
        with pytest.raises(SystemExit) as stopped, one_line_user_errors():
            train(cfg)
        code = stopped.value.code
    else:
        from skintumor.data.__main__ import main as check
        from skintumor.explain.__main__ import main as explain
        from skintumor.predict import export_main, predict_main
        from skintumor.report import main as report

        mains = {"check": check, "explain": explain, "export": export_main, "predict": predict_main, "report": report}
        code = mains[command](args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, reading the code pickles (it refuses them)
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_line_and_changes_nothing(name, shared, tmp_path, capsys):
    case = CASES[name]
    user = tmp_path / "user"
    user.mkdir()
    args = case.make(user, shared)
    before = digest(user)
    code, out, err = run_in_process(case.command, args, tmp_path / "r", capsys)
    # the report command prints its error with its report, on stdout
    lines = [line for line in (out + err if case.command == "report" else err).splitlines() if ERROR_LINE.match(line)]
    assert code != 0 and (case.code is None or code == case.code), (code, out, err)
    assert len(lines) == 1, (out, err)
    assert all(text in lines[0] for text in case.expect), lines[0]
    assert not any(text in out + err for text in case.absent), out + err
    assert "Traceback" not in out + err
    assert digest(user) == before  # not one of the user's files changed, none added, none removed
    if case.marker:
        assert not (user / case.marker).exists(), "the pickle ran"


def test_the_code_pickles_do_run_code_when_unpickled(tmp_path):
    """The marker is a real test: unpickling either file with pickle itself writes it."""
    for fmt in ("torch", "pickle"):
        marker = tmp_path / f"marker_{fmt}"
        path = write_code_pickle(tmp_path / f"evil_{fmt}", marker, fmt)
        if fmt == "torch":
            torch.load(path, weights_only=False)
        else:
            pickle.loads(path.read_bytes())
        assert marker.read_text() == "the pickle ran"


def test_the_huge_png_is_a_real_image_refused_before_decoding(shared, tmp_path):
    """The 12000 x 12000 test image is a valid PNG (the same writer's smaller image decodes to black, and
    PIL reads the big one's header), and the reader refuses it from the header alone: in well under a
    second, where decoding it used to take 5 GB."""
    import time
    import warnings

    from skintumor.data.images import read_greyscale
    from skintumor.errors import DataError

    small = write_blank_png(tmp_path / "small.png", 48, 1000)
    with Image.open(small) as img:
        assert img.size == (48, 1000) and img.mode == "RGB" and not np.asarray(img).any()
    with warnings.catch_warnings():  # PIL's own bomb warning (above 89 megapixels)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(shared["big"]) as img:
            assert img.size == (12000, 12000) and img.mode == "RGB"
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"big.png: image is 12000x12000 px \(144 megapixels\)"):
        read_greyscale(shared["big"])
    assert time.perf_counter() - start < 2.0


def test_a_dicom_header_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    from skintumor.data.images import read_greyscale
    from skintumor.errors import DataError

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, generate_uid(), "US"
    ds.set_pixel_data(np.zeros((4, 4), np.uint8), "MONOCHROME2", 8)
    ds.Rows, ds.Columns = 9000, 8000  # what the header claims; the pixel data is 16 bytes
    ds.save_as(tmp_path / "scan.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match=r"scan.dcm: image is 8000x9000 px \(72 megapixels\), more than the 50-megap"):
        read_greyscale(tmp_path / "scan.dcm")


# ------------------------------------------------------------------------------- as real processes


PROCESSES = [  # (command line, exit code, what its one error line says); each costs a new interpreter
    pytest.param(
        lambda u, s: ["-m", "skintumor.data", "check", str(huge_png(u, s)), "--no-dedup"],
        1,
        ("big.png", "12000x12000 px"),
        id="data-check",
    ),
    pytest.param(  # the Hydra path: a missing data.root used to fail inside Hydra, before any of our code
        lambda u, s: ["-m", "skintumor.train", "data=folder", "debug=fdr", f"hydra.run.dir={u.parent / 'r'}"],
        2,
        ("data=folder needs data.root=DIR",),
        id="train",
    ),
    pytest.param(
        lambda u, s: ["-m", "skintumor.explain", *existing_out_file(u, s)],
        2,
        ("notes.txt", "not a folder"),
        id="explain",
        marks=pytest.mark.slow,  # its main is the in-process cases' (explain-out-is-a-file)
    ),
    pytest.param(
        lambda u, s: ["-m", "skintumor", "predict", str(code_pickle_bundle(u, s, "pickle")), str(scan(u))],
        2,
        ("run.safetensors", "not a readable safetensors file"),
        id="predict",
        marks=pytest.mark.slow,  # its main is the in-process cases' (predict-bundle-run-code-pickle)
    ),
]


@pytest.mark.parametrize("make, expected_code, expect", PROCESSES)
def test_a_real_process_prints_one_line_and_no_traceback(make, expected_code, expect, shared, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    command = [sys.executable, *make(user, shared)]
    before = digest(user)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if ERROR_LINE.match(line)]
    assert proc.returncode == expected_code, proc.stderr[-3000:]
    assert len(lines) == 1 and all(text in lines[0] for text in expect), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert digest(user) == before and not (user / "marker").exists()
