"""Load on the web server (``skintumor serve``): latency, throughput, errors and memory under N clients.

    python -m benchmarks.serve_load [--clients 4] [--seconds 20] [--bundle DIR] [--size 224]
                                    [--members 1] [--leak-requests 1000] [--quick] [--out DIR]

The server runs as users start it, ``python -m skintumor serve BUNDLE`` in its own process on
127.0.0.1 and a free port (nothing else is contacted). Without ``--bundle`` the bundle is the
recipe's network (attention-gated ResNet18 with the lesion decoder, hflip TTA, balanced decision),
random-initialised and seeded, at ``--size`` px with ``--members`` members, written as
``export_bundle`` lays one out: speed does not depend on the weights. Every request is what the page
sends: one 256 x 256 PNG (synthetic speckle with a darker lesion; four of them in turn).

Phases, each from ``--clients`` threads with one ``httpx.Client`` apiece, and each bounded in time
(``--seconds``) and count (``--max-requests``):
  cam      POST /api/predict?cam=true   (the page's default: a Grad-CAM map; these run one at a time)
  plain    POST /api/predict?cam=false  (probabilities only; these run side by side)
  memory   the server's resident memory (VmRSS) after a warm-up, then after ``--leak-requests``
           more requests (cam and plain alternating): its growth in %.
Per phase: requests, requests/s, latency p50/p95 (ms), errors (any status other than 200, or a
failed connection: there must be none, else the exit code is 1). ``--quick``: 32 px, 2 clients,
2 s per phase, 200 requests for the memory phase (a pass through the code path, not a measurement).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from PIL import Image
from rich.table import Table

from benchmarks import common
from skintumor.deploy import bundle as bundles

SCAN = 256  # px of the synthetic scans sent


def random_bundle(out: Path, size: int, members: int) -> Path:
    """A bundle of random-initialised recipe classifiers (seed ``i`` for member ``i``): speed does not
    depend on the weights."""
    return bundles.write_bundle(out, {f"fold_{i}": common.recipe_classifier(size, seed=i) for i in range(members)})


def speckle_pngs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` synthetic B-mode-like scans (:func:`benchmarks.common.speckle_scans`) as PNG bytes."""
    out = []
    for scan in common.speckle_scans(n, SCAN, seed):
        buffer = io.BytesIO()
        Image.fromarray(scan).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Server:
    """``python -m skintumor serve BUNDLE`` on 127.0.0.1 and a free port, until ``stop()``."""

    def __init__(self, bundle: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "skintumor", "serve", str(bundle), "--port", str(self.port)]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, cwd=common.REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server stopped (exit {self.process.returncode}); see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful stop
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def load(url: str, pngs: list[bytes], clients: int, seconds: float, max_requests: int, cams: Sequence[bool]) -> dict:
    """``clients`` threads send requests (cam per ``cams``, cycled) until ``seconds`` pass or
    ``max_requests`` were sent; -> requests, requests/s, p50/p95 ms, errors and their first messages."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        nonlocal sent
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.perf_counter() < deadline:
                with lock:
                    if sent >= max_requests:
                        return
                    i = sent
                    sent += 1
                start = time.perf_counter()
                try:
                    response = http.post(
                        f"/api/predict?cam={str(cams[i % len(cams)]).lower()}",
                        files=[("files", (f"scan_{i % len(pngs)}.png", pngs[i % len(pngs)], "image/png"))],
                    )
                    problem = None if response.status_code == 200 else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if problem:
                        errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = sorted(1000 * v for v in latencies)
    return {
        "requests": len(ms),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(ms) / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1) if ms else None,
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("serve_load", __doc__)
    p.add_argument("--clients", type=int, default=4, help="concurrent clients")
    p.add_argument("--seconds", type=float, default=20, help="length of each load phase")
    p.add_argument("--max-requests", type=int, default=100_000, help="at most this many requests per load phase")
    p.add_argument("--leak-requests", type=int, default=1000, help="requests between the two memory readings")
    p.add_argument("--bundle", type=Path, help="a model bundle (default: a random-initialised one, see above)")
    p.add_argument("--size", type=int, default=224, help="network input size of the random bundle, px")
    p.add_argument("--members", type=int, default=1, help="members of the random bundle")
    run = common.begin("serve_load", p, argv)
    args = run.args
    if args.quick:
        args.size, args.clients, args.seconds, args.leak_requests = 32, 2, 2.0, 200
    bundle = args.bundle or random_bundle(run.work_dir / "model", args.size, args.members)
    if args.bundle is None:
        bundle_note = f"random-initialised recipe network, {args.size} px, {args.members} member(s)"
    else:
        bundle_note = str(args.bundle)
    pngs = speckle_pngs(4)
    server = Server(bundle, run.work_dir / "server.log")
    try:
        with common.console.status("starting skintumor serve"):
            server.wait()
        load(server.url, pngs, 1, 60, 4, [True, False])  # warm-up: first calls allocate and compile
        phases = {}
        for name, cams in (("cam", [True]), ("plain", [False])):
            with common.console.status(f"{name}: {args.clients} clients for {args.seconds:g} s"):
                phases[name] = load(server.url, pngs, args.clients, args.seconds, args.max_requests, cams)
        before = rss_mib(server.process.pid)
        with common.console.status(f"memory: {args.leak_requests} requests"):
            memory = load(server.url, pngs, args.clients, 3600, args.leak_requests, [True, False])
        after = rss_mib(server.process.pid)
    finally:
        server.stop()
    memory |= {"rss_mib_before": round(before, 1), "rss_mib_after": round(after, 1)}
    memory["rss_growth_percent"] = round(100 * (after - before) / before, 2)
    result = {
        "bundle": bundle_note,
        "clients": args.clients,
        "scan_px": SCAN,
        "phases": phases,
        "memory": memory,
        "errors": sum(phase["errors"] for phase in phases.values()) + memory["errors"],
    }
    path = run.save(result)
    table = Table("phase", "requests", "req/s", "p50 ms", "p95 ms", "errors", title=f"skintumor serve, {bundle_note}")
    for name, phase in [*phases.items(), ("memory", memory)]:
        table.add_row(
            name,
            str(phase["requests"]),
            f"{phase['requests_per_s']:.1f}",
            str(phase["p50_ms"]),
            str(phase["p95_ms"]),
            str(phase["errors"]),
        )
    common.console.print(table)
    common.console.print(
        f"server RSS {before:.0f} MiB -> {after:.0f} MiB over {memory['requests']} requests "
        f"({memory['rss_growth_percent']:+.1f} %); result: {path}"
    )
    for phase in [*phases.values(), memory]:
        for example in phase["error_examples"]:
            common.console.print(f"[red]error:[/] {example}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
