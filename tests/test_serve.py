"""``skintumor serve``: the API on a tiny bundle (FastAPI's TestClient, no server, no browser).

The page's numbers must be ``skintumor predict``'s, and every way an upload or a caller can be
wrong must be one clear refusal: size, pixels, not an image, empty, token, a reachable host.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_realdata import texture, write_dicom

from benchmarks.serve_load import random_bundle
from skintumor.__main__ import main
from skintumor.deploy.bundle import export_bundle, load_bundle
from skintumor.deploy.predict import Input, Predictor
from skintumor.deploy.serve import create_app
from skintumor.deploy.serve.guard import SharedExclusive

from conftest import CLASSES


@pytest.fixture(scope="module")
def bundle_dir(tiny_run, tmp_path_factory) -> Path:
    return export_bundle(tiny_run, tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture(scope="module")
def client(bundle_dir) -> TestClient:
    with TestClient(create_app(bundle_dir)) as c:
        yield c


@pytest.fixture(scope="module")
def predictor(bundle_dir) -> Predictor:
    return Predictor(load_bundle(bundle_dir))


def scan(seed: int = 0, shape=(60, 80)) -> np.ndarray:
    """An ultrasound-like picture with a dark oval lesion."""
    image = texture(seed, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lesion = ((yy - shape[0] / 2) / (shape[0] / 5)) ** 2 + ((xx - shape[1] / 2) / (shape[1] / 4)) ** 2 < 1
    return np.clip(image * np.where(lesion, 0.35, 1.0), 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def post(client: TestClient, *files: tuple[str, bytes], cam: bool = True, headers: dict | None = None):
    return client.post(
        f"/api/predict?cam={str(cam).lower()}",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        headers=headers or {},
    )


def decode_data_url(url: str) -> Image.Image:
    head, payload = url.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def expected(predictor: Predictor, path: Path) -> dict[str, float]:
    """``skintumor predict``'s probabilities for one file, class -> p."""
    (result,) = predictor.predict_files([Input(path)], progress=False)
    assert result.status == "ok", result.message
    return dict(zip(predictor.classes, map(float, result.probs)))


def test_a_png_gets_the_probabilities_skintumor_predict_gives(client, predictor, tmp_path):
    path = tmp_path / "lesion.png"
    path.write_bytes(png_bytes(scan()))
    response = post(client, ("lesion.png", path.read_bytes()))
    assert response.status_code == 200, response.text
    (row,) = response.json()["results"]
    want = expected(predictor, path)
    assert row["status"] == "ok" and row["code"] == 200 and row["filename"] == "lesion.png"
    assert list(row["probs"]) == list(CLASSES) and max(abs(row["probs"][c] - want[c]) for c in CLASSES) < 1e-6
    assert row["pred"] == max(want, key=want.get) and abs(sum(row["probs"].values()) - 1) < 1e-5
    assert set(row["spread"]) == set(row["scores"]) == set(CLASSES) and max(row["spread"].values()) == 0  # one member
    assert (row["width"], row["height"]) == (80, 60)
    scan_png, overlay_png = decode_data_url(row["image"]), decode_data_url(row["overlay"])
    assert scan_png.size == overlay_png.size == (80, 60) and overlay_png.mode == "RGB"
    assert 0 < row["overlay_alpha"] < 1
    assert response.headers["cache-control"] == "no-store"

    plain = post(client, ("lesion.png", path.read_bytes()), cam=False).json()["results"][0]
    assert "overlay" not in plain and plain["probs"] == row["probs"]


def test_a_dicom_is_read_like_skintumor_predict_reads_it(client, predictor, tmp_path):
    path = write_dicom(tmp_path / "study" / "IM0001", scan(1), patient_id="P1")  # a PACS file: no suffix
    response = post(client, ("IM0001", path.read_bytes()))
    assert response.status_code == 200, response.text
    (row,) = response.json()["results"]
    want = expected(predictor, path)
    assert max(abs(row["probs"][c] - want[c]) for c in CLASSES) < 1e-6 and row["overlay"]


def test_several_files_at_once_each_get_their_own_answer_in_order(client, predictor, tmp_path):
    files = [(f"scan_{i}.png", png_bytes(scan(i))) for i in range(3)]
    files.insert(2, ("../../notes.png", b"these are my notes, not a picture"))
    response = post(client, *files)
    assert response.status_code == 200  # at least one was predicted
    rows = response.json()["results"]
    assert [r["filename"] for r in rows] == [name for name, _ in files]  # echoed, never used as a path
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok"]
    assert rows[2]["code"] == 415 and rows[2]["message"].startswith("../../notes.png: not an image")
    for (name, data), row in zip(files, rows):
        if row["status"] == "ok":
            (tmp_path / name).write_bytes(data)
            want = expected(predictor, tmp_path / name)
            assert max(abs(row["probs"][c] - want[c]) for c in CLASSES) < 1e-6


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's about the broken file
@pytest.mark.parametrize(
    "name,data,code,message",
    [
        (
            "notes.png",
            b"hello, I am a text file\n",
            415,
            "notes.png: not an image (PNG, JPEG, BMP, TIFF or DICOM expected)",
        ),
        ("empty.png", b"", 422, "empty.png: file is empty (0 bytes)"),
        ("anim.gif", png_bytes(np.zeros((4, 4), np.uint8), "GIF"), 415, "anim.gif: GIF images are not supported"),
        ("broken.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 64, 422, "broken.dcm: "),
    ],
)
def test_what_is_not_a_scan_is_refused_in_one_line(client, name, data, code, message):
    response = post(client, (name, data))
    assert response.status_code == code, response.text
    body = response.json()
    assert body["detail"].startswith(message) and "\n" not in body["detail"]
    assert body["results"][0]["status"] == "error" and body["results"][0]["code"] == code


def test_a_truncated_png_names_the_upload_not_the_temporary_file(client):
    data = png_bytes(scan())
    response = post(client, ("cut.png", data[: len(data) // 2]))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("cut.png: not a readable image") and "skintumor-serve-" not in detail


def test_size_and_pixel_limits_give_413(bundle_dir, tmp_path):
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))  # ~4 KB: incompressible
    with TestClient(create_app(bundle_dir, max_upload_mb=2 / 1024)) as small_files:
        response = post(small_files, ("big.png", big))
        assert response.status_code == 413 and "over the upload limit of" in response.json()["detail"]
        assert post(small_files, ("ok.png", png_bytes(scan(0, (20, 20))))).status_code == 200
        too_long = small_files.post("/api/predict", content=b"x" * (17 * 2048 + 2**20 + 1))
        assert too_long.status_code == 413 and "request body over the limit" in too_long.json()["detail"]
        chunks = (b"x" * 4096 for _ in range(300))  # no Content-Length: counted as it arrives
        streamed = small_files.post(
            "/api/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert streamed.status_code == 413 and "request body over the limit" in streamed.json()["detail"]
    pixels = np.zeros((200, 300), np.uint8)
    bomb = png_bytes(pixels)  # a tiny file of 60,000 pixels
    with TestClient(create_app(bundle_dir, max_pixels=50_000)) as few_pixels:
        response = few_pixels.post("/api/predict", files=[("files", ("bomb.png", bomb))])
        assert response.status_code == 413
        assert (
            response.json()["detail"] == "bomb.png: 300 x 200 pixels is over the limit of 50,000 pixels (--max-pixels)"
        )
        dicom = write_dicom(tmp_path / "big.dcm", pixels)
        assert post(few_pixels, ("big.dcm", dicom.read_bytes())).status_code == 413  # from the header's Rows x Columns


def test_no_files_or_a_bad_option_is_a_clear_error(client):
    response = client.post("/api/predict", files={"other": ("a.png", b"x")})
    assert response.status_code == 422 and "no files" in response.json()["detail"]
    assert client.post("/api/predict?cam=perhaps", files={"files": ("a.png", b"x")}).status_code == 422


def test_the_token_is_checked_on_every_api_call(bundle_dir):
    with TestClient(create_app(bundle_dir, token="s3cret-token")) as client:
        assert client.get("/api/model").status_code == 401
        assert client.get("/api/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/nothing-here").status_code == 401  # nothing under /api/ answers without it
        refused = post(client, ("a.png", png_bytes(scan())))
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret-token"}
        assert client.get("/api/model", headers=good).status_code == 200
        assert post(client, ("a.png", png_bytes(scan())), headers=good).status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}  # the page and health check need no token
        assert client.get("/").status_code == 200


def test_model_describes_the_bundle_without_absolute_paths(client, bundle_dir, tiny_run):
    meta = client.get("/api/model").json()
    assert meta["classes"] == list(CLASSES) and meta["members"][0]["name"] == "run"
    assert meta["training_data"]["images_per_class"] and "research use only" in meta["intended_use"].lower()
    assert meta["serve"] == {"max_upload_mb": 25, "max_pixels": 50_000_000, "max_files": 16}
    text = json.dumps(meta)
    assert "source" not in meta and str(tiny_run) not in text and str(bundle_dir) not in text

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    assert not [s for s in strings(meta) if s.startswith("/") or "=/" in s]


def test_the_page_and_health_check_are_served_with_a_strict_policy(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "Research use only — not a medical device" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    for name in ("app.js", "style.css"):
        asset = client.get(f"/{name}")
        assert asset.status_code == 200 and "http://" not in asset.text and "https://" not in asset.text
    assert client.get("/docs").status_code == 404  # FastAPI's docs page would load a CDN


def test_concurrent_requests_with_and_without_maps_do_not_disturb_each_other(tmp_path):
    """Grad-CAM's hooks sit on the shared network: a map computed while other requests run must be
    the map computed alone (without the lock, most of these maps are another request's), and so must
    every probability. A 64 px network: at 32 px a forward pass is too short for threads to overlap."""
    service = create_app(random_bundle(tmp_path / "model", size=64, members=1)).state.service
    jobs = [([(f"s{i}.png", png_bytes(scan(i % 4)))], i % 2 == 0) for i in range(16)]
    alone = [service.predict(*job) for job in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: service.predict(*job), jobs))
    for (_, a), (_, b) in zip(alone, together):
        (a,), (b,) = a["results"], b["results"]
        assert max(abs(a["probs"][c] - b["probs"][c]) for c in a["probs"]) < 1e-6
        assert ("overlay" in a) == ("overlay" in b)
        if "overlay" in a:  # another request's activations give another map, not a rounding difference
            gap = np.abs(np.asarray(decode_data_url(a["overlay"]), float) - np.asarray(decode_data_url(b["overlay"])))
            assert gap.max() <= 2


def test_a_request_waits_while_a_map_holds_the_model(client):
    service = client.app.state.service
    upload = [("s.png", png_bytes(scan()))]
    with ThreadPoolExecutor(1) as pool:
        with service.guard.exclusive():  # what a request computing a map holds
            waiting = pool.submit(service.predict, upload, False)
            time.sleep(0.5)
            assert not waiting.done()
        assert waiting.result(timeout=60)[0] == 200
        with service.guard.shared():  # what plain predictions hold
            waiting = pool.submit(service.predict, upload, True)
            time.sleep(0.5)
            assert not waiting.done()
        assert waiting.result(timeout=60)[0] == 200


def test_shared_exclusive_lock_keeps_an_exclusive_holder_alone():
    lock, inside, overlaps = SharedExclusive(), [], []
    guard = threading.Lock()

    def work(exclusive: bool):
        with lock.hold(exclusive):
            with guard:
                inside.append(exclusive)
                if exclusive and len(inside) > 1 or not exclusive and True in inside:
                    overlaps.append(list(inside))
            time.sleep(0.01)
            with guard:
                inside.remove(exclusive)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, [i % 3 == 0 for i in range(24)]))
    assert overlaps == []


def test_serve_refuses_a_reachable_host_without_a_token_and_a_bad_bundle(bundle_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SKINTUMOR_TOKEN", raising=False)
    assert main(["serve", str(bundle_dir), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--host 0.0.0.0" in err and "--token" in err
    assert main(["serve", str(tmp_path / "no_bundle")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.json: not found" in err
    assert main(["serve", str(bundle_dir), "--max-pixels", "60000000"]) == 2  # above what the readers decode
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-pixels 60000000: must be 1..50000000" in err
