"""Real data in: image formats, DICOM, BUSI layout, CSV errors, scan-area crop, duplicates, the check."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from skintumor.data.__main__ import detect_source, main
from skintumor.data.check import check_manifest, prepare_manifest
from skintumor.data.dedup import apply_duplicate_groups, find_duplicates
from skintumor.data.dicom import dicom_header, is_dicom
from skintumor.data.folds import PatientGroupedFolds
from skintumor.data.images import read_greyscale, read_mask
from skintumor.data.manifest import Manifest
from skintumor.data.scan_area import crop_scan_area, find_scan_area
from skintumor.data.sources import busi_manifest, csv_manifest, dicom_manifest, folder_manifest, load_source
from skintumor.errors import DataError

BUSI = Path("../shared/data/busi")


# ---------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with (size, mtime_ns): equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def texture(seed: int, shape=(120, 160)) -> np.ndarray:
    """An ultrasound-like HxW uint8 picture: smooth blobs times speckle, different for every seed."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape), sigma=min(shape) / 10)
    blobs = (blobs - blobs.min()) / (np.ptp(blobs) + 1e-9)
    speckle = ndimage.gaussian_filter(rng.random(shape), sigma=1)
    return np.clip(255 * blobs * (0.6 + 0.8 * speckle), 0, 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_dicom(
    path: Path,
    array: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
    patient_id: str | None = None,
    pixel_spacing=None,
    us_region_cm=None,
) -> Path:
    """A small synthetic DICOM (multi-frame when ``array`` is FxHxW or FxHxWx3)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, generate_uid(), "US"
    if patient_id is not None:
        ds.PatientID = patient_id
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if us_region_cm is not None:
        region = Dataset()
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX, region.PhysicalDeltaY = us_region_cm
        ds.SequenceOfUltrasoundRegions = [region]
    ds.set_pixel_data(array, photometric, bits_stored)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------- image formats

GREY = np.tile(np.arange(256, dtype=np.uint8), (3, 1))[:, ::-1].reshape(24, 32)  # every grey level once


@pytest.mark.parametrize(
    "fmt,mode",
    [
        ("png", "L"),
        ("png", "I;16"),
        ("png", "RGB"),
        ("png", "RGBA"),
        ("png", "P"),
        ("png", "LA"),
        ("tiff", "L"),
        ("tiff", "I;16"),
        ("tiff", "RGB"),
        ("tiff", "RGBA"),
        ("bmp", "L"),
        ("bmp", "RGB"),
        ("bmp", "P"),
    ],
)
def test_every_format_and_depth_gives_the_same_grey(tmp_path, fmt, mode):
    if mode == "I;16":
        img = Image.fromarray(GREY.astype(np.uint16) * 257)  # the same picture at 16 bit
    elif mode == "P":
        img = Image.fromarray(255 - GREY, "P")  # a reversed grey palette: index i shows 255 - i
        img.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    else:
        img = Image.fromarray(GREY, "L").convert(mode)
    path = tmp_path / f"x.{fmt}"
    img.save(path)
    assert Image.open(path).mode.startswith(mode[:1])
    np.testing.assert_array_equal(read_greyscale(path), GREY)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_reads_close_to_the_original(tmp_path, mode):
    picture = texture(1)
    Image.fromarray(picture).convert(mode).save(tmp_path / "x.jpg", quality=95)
    assert np.abs(read_greyscale(tmp_path / "x.jpg").astype(int) - picture).mean() < 2


def test_colour_becomes_luma_the_same_way_in_every_container(tmp_path):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    rgb = colours[rng.integers(0, 16, (20, 30))]  # 16 colours: a palette holds them exactly
    expected = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    img = Image.fromarray(rgb)
    for name, im in [
        ("a.png", img),
        ("b.tiff", img),
        ("c.bmp", img),
        ("d.png", img.convert("RGBA")),
        ("e.png", img.quantize(16)),
        ("f.tiff", img.convert("RGBA")),
    ]:
        im.save(tmp_path / name)
        assert np.abs(read_greyscale(tmp_path / name).astype(int) - expected).max() <= 1, name


def test_bit_depth_not_image_brightness_sets_the_scale(tmp_path):
    dark16 = np.full((8, 8), 200, np.uint16)  # a very dark 16-bit image is not an 8-bit one
    Image.fromarray(dark16).save(tmp_path / "dark16.png")
    assert read_greyscale(tmp_path / "dark16.png").max() <= 1
    dark_rgb = np.zeros((8, 8, 3), np.uint8)
    dark_rgb[2:4, 2:4] = 1  # a nearly black colour image stays nearly black
    Image.fromarray(dark_rgb).save(tmp_path / "dark_rgb.png")
    assert read_greyscale(tmp_path / "dark_rgb.png").max() == 1


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"", "empty"),
        (b"this is a text file, not a picture\n", "not a readable image"),
        ("truncated", "not a readable image"),
    ],
)
def test_bad_image_files_give_a_data_error_naming_the_file(tmp_path, content, problem):
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(texture(2)).save(buf, "PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path = tmp_path / "scan 7.png"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=problem) as err:
        read_greyscale(path)
    assert "scan 7.png" in str(err.value) and "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_masks_binary_label_map_jpeg_and_union(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 10:30] = 1  # 0/1 label map
    save_png(tmp_path / "m01.png", mask)
    assert read_mask(tmp_path / "m01.png").sum() == 200
    Image.fromarray(mask * 255).save(tmp_path / "m.jpg", quality=60)  # compression noise around the edge
    assert abs(int(read_mask(tmp_path / "m.jpg").sum()) - 200) < 30
    other = np.zeros_like(mask)
    other[30:35, 40:45] = 255
    save_png(tmp_path / "m2.png", other)
    assert read_mask([tmp_path / "m01.png", tmp_path / "m2.png"]).sum() == 225


def test_masks_in_odd_shapes(tmp_path):
    lesion = np.zeros((30, 40), bool)
    lesion[5:15, 10:30] = True
    Image.fromarray(lesion.astype(np.uint16)).save(tmp_path / "label16.png")  # 16-bit label map 0/1
    overlay = np.zeros((30, 40, 4), np.uint8)
    overlay[..., 3] = lesion * 128  # transparent overlay: the lesion only in alpha
    Image.fromarray(overlay, "RGBA").save(tmp_path / "overlay.png")
    red = np.zeros((30, 40, 3), np.uint8)
    red[lesion] = (255, 0, 0)  # drawn in red
    Image.fromarray(red).save(tmp_path / "red.png")
    for name in ("label16.png", "overlay.png", "red.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), lesion, err_msg=name)


def test_mask_of_the_wrong_size_names_the_mask(tmp_path):
    save_png(tmp_path / "small_mask.png", np.zeros((10, 10), np.uint8))
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="small_mask.png: mask is 10x10 px but its image is 50x40 px"):
        read_mask(tmp_path / "small_mask.png", shape=(40, 50))
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- DICOM


def test_dicom_greyscale_16bit_monochrome1_rgb_ybr_round_trip(tmp_path):
    from pydicom.pixels import convert_color_space

    picture = texture(3)
    write_dicom(tmp_path / "grey.dcm", picture)
    np.testing.assert_array_equal(read_greyscale(tmp_path / "grey.dcm"), picture)
    twelve = (picture.astype(np.int64) * 4095 // 255).astype(np.uint16)  # 12 bits stored in 16
    write_dicom(tmp_path / "twelve.dcm", twelve, bits_stored=12)
    assert np.abs(read_greyscale(tmp_path / "twelve.dcm").astype(int) - picture).max() <= 1
    write_dicom(tmp_path / "inverted.dcm", 255 - picture, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_greyscale(tmp_path / "inverted.dcm"), picture)
    rgb = np.stack([picture, picture // 2, 255 - picture], axis=-1)
    expected = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    assert np.abs(read_greyscale(tmp_path / "rgb.dcm").astype(int) - expected).max() <= 1
    write_dicom(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), photometric="YBR_FULL")
    assert np.abs(read_greyscale(tmp_path / "ybr.dcm").astype(int) - expected).max() <= 3


def test_dicom_jpeg_baseline_ybr_is_decoded(tmp_path):
    """The most common ultrasound export: JPEG baseline, YBR_FULL_422, decoded by pydicom's Pillow plugin."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, UltrasoundImageStorage, generate_uid

    picture = texture(4, (64, 80))
    rgb = np.stack([picture] * 3, axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 64, 80, 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    assert np.abs(read_greyscale(tmp_path / "jpeg.dcm").astype(int) - picture).mean() < 3


def test_dicom_multiframe_gives_the_middle_frame(tmp_path):
    frames = np.stack([np.full((16, 20), v, np.uint8) for v in (10, 50, 90, 130, 170)])
    write_dicom(tmp_path / "clip.dcm", frames)
    assert (read_greyscale(tmp_path / "clip.dcm") == 90).all()


def test_dicom_without_pixel_data_or_broken_is_a_data_error(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid(), "P1"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 64 + b"not dicom")
    Image.fromarray(texture(8)).save(tmp_path / "png.dcm", "PNG")
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"report\.dcm: DICOM file has no pixel data"):
        read_greyscale(tmp_path / "report.dcm")
    with pytest.raises(DataError, match=r"junk\.dcm"):
        read_greyscale(tmp_path / "junk.dcm")
    with pytest.raises(DataError, match=r"png\.dcm: not a readable DICOM file"):
        read_greyscale(tmp_path / "png.dcm")
    assert snapshot(tmp_path) == before
    # in a DICOM folder both are listed by the check, the source itself does not stop at them
    for name in ("report.dcm", "junk.dcm"):
        (tmp_path / "data" / "cyst").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "cyst" / name).write_bytes((tmp_path / name).read_bytes())
    write_dicom(tmp_path / "data" / "lipoma" / "ok.dcm", texture(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = check_manifest(dicom_manifest(tmp_path / "data"))
    assert len(report.errors) == 2 and "report.dcm" in report.errors[1] and "junk.dcm" in report.errors[0]


def test_dicom_source_patient_ids_spacing_and_clips(tmp_path):
    root = tmp_path / "data"
    picture = texture(5)
    write_dicom(root / "lipoma" / "a.dcm", picture, patient_id="P1", pixel_spacing=(0.1, 0.12))
    write_dicom(root / "lipoma" / "b.dcm", picture, patient_id="P1", us_region_cm=(0.02, 0.015))
    write_dicom(root / "cyst" / "c.dcm", np.stack([picture] * 3))  # a clip, no PatientID
    write_dicom(root / "cyst" / "IM0004", picture, patient_id="P2")  # PACS export without suffix
    before = snapshot(root)
    assert is_dicom(root / "cyst" / "IM0004") and detect_source(root) == "dicom"
    with pytest.warns(UserWarning, match="multi-frame"):
        m = dicom_manifest(root)
    rows = m.table.set_index("path")
    assert rows.loc["lipoma/a.dcm", "patient_id"] == rows.loc["lipoma/b.dcm", "patient_id"] == "P1"
    assert rows.loc["cyst/IM0004", "patient_id"] == "P2"
    assert rows.loc["cyst/c.dcm", "patient_id"] == "img:cyst/c.dcm"
    assert (rows.loc["lipoma/a.dcm", "pixel_spacing_row_mm"], rows.loc["lipoma/a.dcm", "pixel_spacing_col_mm"]) == (
        "0.1",
        "0.12",
    )
    assert (rows.loc["lipoma/b.dcm", "pixel_spacing_row_mm"], rows.loc["lipoma/b.dcm", "pixel_spacing_col_mm"]) == (
        "0.15",
        "0.2",
    )
    assert rows.loc["cyst/c.dcm", "n_frames"] == "3" and rows.loc["cyst/c.dcm", "pixel_spacing_row_mm"] == ""
    with pytest.raises(DataError, match=r"c\.dcm: multi-frame DICOM clip"):
        dicom_manifest(root, multiframe="refuse")
    assert dicom_header(root / "lipoma" / "a.dcm")["patient_id"] == "P1"
    # labels from a CSV; the CSV's patient ids win, PatientID fills the gaps
    pd.DataFrame({"path": ["lipoma/a.dcm", "cyst/IM0004"], "label": ["lipoma", "cyst"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    m = dicom_manifest(root, manifest=tmp_path / "m.csv")
    assert list(m.table["patient_id"]) == ["P1", "P2"] and m.classes == ["cyst", "lipoma"]
    assert snapshot(root) == before


# ---------------------------------------------------------------- CSV and folder sources


@pytest.fixture
def class_folder(tmp_path) -> Path:
    root = tmp_path / "scans"
    for k in range(3):
        save_png(root / "cyst" / f"c{k}.png", texture(10 + k))
        save_png(root / "lipoma" / f"l{k}.png", texture(20 + k))
    return root


@pytest.mark.parametrize(
    "table,problem",
    [
        ({"path": ["cyst/c0.png"], "patient_id": ["p"]}, r"missing column\(s\) label"),
        ({"path": ["cyst/c0.png"], "label": ["melanoma"], "patient_id": ["p"]}, "unknown class 'melanoma'"),
        ({"path": ["../escape.png"], "label": ["cyst"], "patient_id": ["p"]}, "points outside the data root"),
        ({"path": ["cyst/nope.png"], "label": ["cyst"], "patient_id": ["p"]}, "does not exist"),
        (
            {"path": ["cyst/c0.png"], "label": ["cyst"], "patient_id": ["p"], "mask_path": ["/etc/passwd"]},
            "points outside the data root",
        ),
    ],
)
def test_csv_problems_name_the_csv(class_folder, table, problem):
    csv = class_folder.parent / "manifest.csv"
    pd.DataFrame(table).to_csv(csv, index=False)
    before = snapshot(class_folder)
    with pytest.raises(DataError, match=problem) as err:
        csv_manifest(class_folder, csv, classes=["cyst", "lipoma"])
    assert "manifest.csv" in str(err.value)
    assert snapshot(class_folder) == before


def test_csv_keeps_extra_columns_and_multi_masks(class_folder):
    save_png(class_folder / "cyst" / "c0_m.png", np.zeros((120, 160), np.uint8))
    csv = class_folder / "m.csv"
    pd.DataFrame(
        {
            "path": ["cyst/c0.png", "lipoma/l0.png"],
            "label": ["cyst", "lipoma"],
            "patient_id": ["a", "b"],
            "mask_path": ["cyst/c0_m.png;cyst/c0_m.png", ""],
            "site": ["arm", "neck"],
        }
    ).to_csv(csv, index=False)
    m = csv_manifest(manifest=csv)
    assert list(m.table["site"]) == ["arm", "neck"] and len(m.mask_paths(0)) == 2 and m.mask_path(1) is None


def test_folder_source_reads_dicom_too(class_folder):
    write_dicom(class_folder / "cyst" / "d.dcm", texture(30))
    with pytest.warns(UserWarning, match="own patient"):
        m = folder_manifest(class_folder)
    assert "cyst/d.dcm" in set(m.table["path"]) and len(m) == 7


# ---------------------------------------------------------------- BUSI layout


@pytest.fixture
def busi_like(tmp_path) -> Path:
    root = tmp_path / "busi"
    for cls, seed in [("benign", 40), ("malignant", 50)]:
        for k in range(3):
            image = texture(seed + k)
            save_png(root / cls / f"{cls} ({k}).png", image)
            mask = np.zeros(image.shape, np.uint8)
            mask[20:40, 30 + 10 * k : 60 + 10 * k] = 255
            save_png(root / cls / f"{cls} ({k})_mask.png", mask)
    second = np.zeros((120, 160), np.uint8)
    second[80:90, 100:120] = 255
    save_png(root / "benign" / "benign (1)_mask_1.png", second)
    return root


def test_busi_masks_are_merged_at_read_time_and_nothing_is_written(busi_like):
    before = snapshot(busi_like)
    assert detect_source(busi_like) == "busi"
    m = busi_manifest(busi_like)
    assert len(m) == 6 and (m.table["mask_path"] != "").all()
    row = m.table.index[m.table["path"] == "benign/benign (1).png"][0]
    assert m.table.loc[row, "n_masks"] == 2
    assert read_mask(m.mask_path(row)).sum() == 20 * 30 + 10 * 20
    prepared = prepare_manifest(m, crop=True)
    assert len(prepared.images) == 6 and all(mk is not None and mk.any() for mk in prepared.masks)
    assert snapshot(busi_like) == before


def test_load_source_busi_default_root_is_relative_to_the_repo_root(monkeypatch, busi_like):
    monkeypatch.chdir(busi_like.parent)
    (busi_like.parent / "repo").mkdir()
    (busi_like.parent / "shared" / "data").mkdir(parents=True)
    busi_like.rename(busi_like.parent / "shared" / "data" / "busi")
    monkeypatch.chdir(busi_like.parent / "repo")
    assert len(load_source("busi")) == 6


# ---------------------------------------------------------------- scan-area crop


def test_find_scan_area_drops_scanner_ui_and_keeps_the_mask_aligned():
    screen = np.zeros((240, 320), np.uint8)
    screen[40:200, 50:270] = texture(60, (160, 220)) // 2 + 60  # the scan: tissue is never pure black
    screen[10:13, 60:200] = 255  # a line of "text" above it
    for x in range(20, 40, 4):
        screen[100:110, x] = 230  # thin characters in the left margin
    screen[30:210, 290:300] = np.linspace(255, 0, 180, dtype=np.uint8)[:, None]  # grey bar, separate
    screen[120:150, 120:160] = 0  # an anechoic cyst inside the scan
    mask = np.zeros_like(screen, bool)
    mask[120:150, 120:160] = True
    box = find_scan_area(screen)
    assert np.allclose(box, (40, 200, 50, 270), atol=3), box
    image, cropped_mask, _ = crop_scan_area(screen, mask)
    assert cropped_mask.shape == image.shape and (image[cropped_mask] == 0).all() and cropped_mask.sum() == mask.sum()


def test_a_wide_anechoic_lesion_does_not_cut_the_scan_in_two():
    screen = np.zeros((240, 320), np.uint8)
    screen[20:220, 30:290] = texture(62, (200, 260)) // 2 + 60
    screen[90:150, 30:290] = 0  # a cyst as wide as the scan: tissue above, back wall below
    assert np.allclose(find_scan_area(screen), (20, 220, 30, 290), atol=3)


def test_find_scan_area_keeps_the_whole_image_when_unsure():
    assert find_scan_area(np.zeros((50, 60), np.uint8)) == (0, 50, 0, 60)
    full = texture(61)
    assert find_scan_area(full // 2 + 60) == (0, 120, 0, 160)


# ---------------------------------------------------------------- duplicates


def variants(base: np.ndarray) -> dict[str, np.ndarray]:
    """Copies of one 160x200 scan as a clinic produces them: crop shifted, rescaled, JPEG re-saved."""
    h, w = 120, 160
    buf = io.BytesIO()
    Image.fromarray(base[:h, :w]).save(buf, "JPEG", quality=70)
    return {
        "orig": base[:h, :w],
        "shift": base[3 : 3 + h, 2 : 2 + w],
        "rescaled": np.asarray(Image.fromarray(base[:h, :w]).resize((200, 150), Image.BILINEAR)),
        "jpeg": np.asarray(Image.open(buf)),
    }


def manifest_of(images: dict[str, np.ndarray], labels: dict[str, str], root: Path) -> Manifest:
    for name, image in images.items():
        save_png(root / labels[name] / f"{name}.png", image)
    table = pd.DataFrame(
        {
            "path": [f"{labels[n]}/{n}.png" for n in images],
            "label": [labels[n] for n in images],
            "patient_id": [f"img:{n}" for n in images],
        }
    )
    return Manifest(table, root)


def test_near_duplicates_are_found_and_different_images_are_not_merged(tmp_path):
    images, labels = {}, {}
    for s in range(6):
        for kind, image in variants(texture(100 + s, (160, 200))).items():
            images[f"s{s}_{kind}"] = image
            labels[f"s{s}_{kind}"] = "cyst" if s % 2 else "lipoma"
    m = manifest_of(images, labels, tmp_path)
    report = find_duplicates(m)
    groups = [sorted(m.table["path"][i].split("/")[1].split("_")[0] for i in g) for g in report.groups]
    assert sorted(groups) == [[f"s{s}"] * 4 for s in range(6)]  # each scan's 4 copies, nothing else
    assert report.conflicts.empty
    grouped = apply_duplicate_groups(m, report)
    assert grouped.table["group_id"].nunique() == 6
    folds = PatientGroupedFolds(grouped.labels, grouped.groups, n_splits=3, val_fraction=0.49)
    for fold in range(3):
        split = folds.split(fold)
        for part in (split.train, split.val):  # assert_disjoint_groups ran; check copies directly too
            assert not set(grouped.table["group_id"][part]) & set(grouped.table["group_id"][split.test])


def test_patient_ids_and_duplicates_join_into_one_group(tmp_path):
    a, b, c = texture(200), texture(201), texture(202)
    m = manifest_of(
        {"a": a, "b": b, "a_copy": a, "c": c}, {"a": "cyst", "b": "cyst", "a_copy": "cyst", "c": "cyst"}, tmp_path
    )
    table = m.table.drop(columns="group_id").assign(patient_id=["P1", "P1", "P9", "P3"])
    m = Manifest(table, m.root)  # b belongs to P1; a_copy was filed under P9
    grouped = apply_duplicate_groups(m, find_duplicates(m))
    assert list(grouped.table["group_id"]) == ["dup:P1", "dup:P1", "dup:P1", "P3"]
    assert list(m.table["group_id"]) == ["P1", "P1", "P9", "P3"]  # the input is not changed


def test_a_users_groups_survive_duplicate_grouping(tmp_path):
    """group_id given in a CSV (e.g. two patients who are one family's scans) is kept by dedup."""
    a, b, c, d = texture(210), texture(211), texture(212), texture(213)
    m = manifest_of({"a": a, "b": b, "c": c, "d": d}, dict.fromkeys("abcd", "cyst"), tmp_path)
    m = Manifest(m.table.assign(patient_id=["P1", "P2", "P3", "P4"], group_id=["G", "G", "P3", "P4"]), m.root)
    grouped = apply_duplicate_groups(m, find_duplicates(m))
    assert list(grouped.table["group_id"]) == ["G", "G", "P3", "P4"]


def test_label_conflicts_are_reported_and_excluded_when_asked(tmp_path):
    a, b, c = texture(300), texture(301), texture(302)
    m = manifest_of(
        {"a": a, "a_again": a, "b": b, "c": c}, {"a": "cyst", "a_again": "lipoma", "b": "cyst", "c": "lipoma"}, tmp_path
    )
    report = find_duplicates(m)
    assert len(report.conflicts) == 1 and report.conflict_rows == [0, 1]
    with pytest.warns(UserWarning, match="different labels"):
        kept = apply_duplicate_groups(m, report, label_conflicts="keep")
    assert len(kept) == 4 and kept.table["group_id"][0] == kept.table["group_id"][1]
    excluded = apply_duplicate_groups(m, report, label_conflicts="exclude")
    assert list(excluded.table["path"]) == ["cyst/b.png", "lipoma/c.png"]
    prepared = prepare_manifest(m, label_conflicts="exclude")
    assert len(prepared.images) == 2 and list(prepared.manifest.table["path"]) == ["cyst/b.png", "lipoma/c.png"]
    np.testing.assert_array_equal(prepared.images[0], b)
    with pytest.raises(DataError, match="label_conflicts"):
        apply_duplicate_groups(m, report, label_conflicts="drop")


# ---------------------------------------------------------------- the check


def test_check_lists_every_bad_file_and_prepare_refuses(class_folder):
    (class_folder / "cyst" / "empty.png").write_bytes(b"")
    (class_folder / "lipoma" / "notes.png").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = folder_manifest(class_folder)
    before = snapshot(class_folder)
    report = check_manifest(m)
    assert not report.ok and len(report.errors) == 2
    assert any("empty.png" in e for e in report.errors) and any("notes.png" in e for e in report.errors)
    assert report.classes.set_index("class").loc["cyst", "images"] == 4
    with pytest.raises(DataError, match=r"2 bad file\(s\).*empty\.png.*notes\.png"):
        prepare_manifest(m)
    assert snapshot(class_folder) == before


def test_check_reports_wrong_size_masks(busi_like):
    save_png(busi_like / "malignant" / "malignant (2)_mask.png", np.zeros((10, 10), np.uint8))
    report = check_manifest(busi_manifest(busi_like))
    assert len(report.errors) == 1 and "malignant (2)_mask.png: mask is 10x10 px" in report.errors[0]


def test_cli_exits_non_zero_and_names_the_broken_image(class_folder, capsys):
    assert detect_source(class_folder) == "folder"
    assert main(["check", str(class_folder)]) == 0
    good = capsys.readouterr().out
    assert "cyst" in good and "OK" in good
    (class_folder / "lipoma" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (class_folder / "cyst" / "zero.png").write_bytes(b"")
    before = snapshot(class_folder)
    assert main(["check", str(class_folder), "--no-dedup"]) == 1
    out, err = capsys.readouterr()
    assert "broken.png" in err and "zero.png" in err and "2 bad file(s)" in out
    assert main(["check", str(class_folder / "missing")]) == 2
    assert snapshot(class_folder) == before


def test_check_warns_about_a_blanked_patient_id(tmp_path):
    images = {f"s{k}": texture(500 + k, (40, 48)) for k in range(12)}
    m = manifest_of(images, {n: "cyst" for n in images}, tmp_path)
    m = Manifest(m.table.drop(columns="group_id").assign(patient_id=["ANON"] * 11 + ["P2"]), tmp_path)
    report = check_manifest(m, dedup=False)
    assert not report.errors and any("'ANON' has 11 of 12 images" in w for w in report.warnings)


def test_cli_checks_a_csv_manifest(class_folder, capsys):
    pd.DataFrame(
        {
            "path": ["cyst/c0.png", "lipoma/l0.png", "cyst/c1.png", "lipoma/l1.png"],
            "label": ["cyst", "lipoma", "cyst", "lipoma"],
            "patient_id": ["a", "b", "a", "c"],
        }
    ).to_csv(class_folder / "m.csv", index=False)
    assert main(["check", str(class_folder / "m.csv")]) == 0
    out = capsys.readouterr().out
    assert "4 images, 3 patients" in out


# ---------------------------------------------------------------- the real BUSI copy


@pytest.fixture(scope="module")
def busi_report():
    if not BUSI.is_dir():
        pytest.skip(f"{BUSI} not present")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return check_manifest(busi_manifest(BUSI))


def test_busi_counts_masks_and_duplicates(busi_report):
    counts = busi_report.classes.set_index("class")
    assert counts["images"].to_dict() == {"benign": 437, "malignant": 210, "normal": 133}  # SOURCE.md
    assert (counts["masks"] == counts["images"]).all() and busi_report.ok
    assert counts.loc["normal", "empty_masks"] == 133 and counts.loc["benign", "empty_masks"] == 0
    table = busi_report.manifest.table
    assert table["n_masks"].sum() == 454 + 211 + 133  # every mask file of SOURCE.md is used
    dup = busi_report.duplicates
    assert len(dup.exact_pairs) >= 5 and len(dup.groups) >= 100  # the published critique: many duplicates
    assert len(dup.conflicts) >= 5  # lesions filed under two classes
    pair = {table["path"][dup.conflicts["i"][0]], table["path"][dup.conflicts["j"][0]]}
    assert pair == {"benign/benign (433).png", "malignant/malignant (145).png"}


# ---------------------------------------------------------------- the data module runs the check


def test_datamodule_groups_duplicates_and_refuses_bad_files(tmp_path):
    from skintumor.data.datamodule import UltrasoundDataModule

    images, labels = {}, {}
    for s in range(8):
        cls = "cyst" if s % 2 else "lipoma"
        images[f"s{s}"] = images[f"s{s}_copy"] = texture(400 + s)
        labels[f"s{s}"] = labels[f"s{s}_copy"] = cls
    m = manifest_of(images, labels, tmp_path / "d")
    dm = UltrasoundDataModule(manifest=m, image_size=32, n_folds=2, val_fraction=0.34, dedup=True)
    dm.setup()
    assert dm.manifest.table["group_id"].nunique() == 8 and dm.images[0].shape == (32, 32)
    groups = np.asarray(dm.manifest.groups)
    assert not set(groups[dm.split.train]) & set(groups[dm.split.test])
    (tmp_path / "d" / "cyst" / "s1.png").write_bytes(b"")
    (tmp_path / "d" / "cyst" / "s3.png").write_text("text")
    with pytest.raises(DataError, match=r"2 bad file\(s\).*s1\.png.*s3\.png"):
        UltrasoundDataModule(manifest=m, image_size=32, n_folds=2).setup()


@pytest.mark.slow
def test_one_training_epoch_on_busi_at_64_px(tmp_path):
    """~2.5 min on 2 shared CPU cores: decode + check + dedup + one epoch + test."""
    import json
    import subprocess
    import sys

    if not BUSI.is_dir():
        pytest.skip(f"{BUSI} not present")
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skintumor.train",
            "data=busi",
            "data.image_size=64",
            "data.batch_size=32",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "logger=csv",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = pd.read_csv(run / "manifest.csv", dtype=str, keep_default_na=False)
    split = json.loads((run / "split.json").read_text())
    assert len(manifest) == 780 and manifest["group_id"].str.startswith("dup:").sum() > 100
    parts = {k: set(manifest["group_id"].iloc[split[k]]) for k in ("train", "val", "test")}
    assert not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    assert (run / "metrics_test.json").is_file()
