"""The ``pulse studio`` subcommand: its flags and the serving loop."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``studio`` to the ``pulse`` command's subparsers."""
    p = sub.add_parser(
        "studio",
        help="every technique in a local web page, with live preview",
        description="Serve the studio page on 127.0.0.1 (only) and open it in a browser.",
    )
    p.add_argument(
        "--port", type=int, default=8765, help="port (default 8765; 0: any free)"
    )
    p.add_argument(
        "--model", default="toy", help="model shown first (default: the toy)"
    )
    p.add_argument(
        "--preview-steps",
        type=int,
        default=4,
        help="denoising steps of the live preview (default 4)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..cli import CliError
    from .server import Studio, make_server

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: expected 0 to 65535")
    if args.preview_steps < 1:
        raise CliError(f"--preview-steps {args.preview_steps}: expected at least 1")
    # the page shows each render's progress; keep the terminal free of progress bars
    os.environ.setdefault("TQDM_DISABLE", "1")
    studio = Studio(preview_steps=args.preview_steps, default_model=args.model)
    try:
        server = make_server(studio, args.port)
    except OSError as err:
        raise CliError(
            f"--port {args.port}: cannot listen ({err.strerror or err})"
        ) from err
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"pulse studio: {url}  (Ctrl-C stops it)", flush=True)
    if not args.no_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("pulse studio: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
