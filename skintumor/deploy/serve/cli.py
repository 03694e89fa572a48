"""``skintumor serve BUNDLE [--host 127.0.0.1] [--port 8000] [--token T]``: the page, in uvicorn.

Exit codes: 0 stopped (Ctrl-C); 2 the bundle or an option cannot be used (one line says why: a
bundle that does not load, or a host other machines can reach without a token).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from skintumor.cli import exit_code
from skintumor.data.pixels import MAX_PIXELS
from skintumor.deploy.serve.security import TOKEN_ENV, check_host, is_local
from skintumor.errors import ConfigError


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skintumor serve",
        description="A local web page that predicts scans with a model bundle (research use only).",
    )
    parser.add_argument("bundle", type=Path, help="a model bundle folder (skintumor export)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"access token every API call must send (default: ${TOKEN_ENV}); required with a non-local --host",
    )
    parser.add_argument("--max-upload-mb", type=float, default=25, help="largest file accepted (default 25)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"largest image, width x height (default and most: {MAX_PIXELS:,}, the data readers' limit)",
    )
    return exit_code(lambda: serve(parser.parse_args(argv)))


def serve(args: argparse.Namespace) -> int:
    check_host(args.host, args.token)  # before anything is loaded
    if not 0 < args.max_pixels <= MAX_PIXELS:
        raise ConfigError(f"--max-pixels {args.max_pixels}: must be 1..{MAX_PIXELS} (the image readers' limit)")
    import uvicorn

    from skintumor.deploy.serve.app import create_app

    app = create_app(args.bundle, args.token, args.max_upload_mb, args.max_pixels)
    where = f"[{args.host}]" if ":" in args.host else args.host
    note = "" if is_local(args.host) else ", reachable from other machines: API calls need the token"
    Console().print(f"skintumor serve: http://{where}:{args.port}/ (research use only{note}; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
