"""The studio's HTTP server: one page and a JSON API, on 127.0.0.1 only.

API (JSON in and out):
  GET  /                     the page
  GET  /api/info?model=M     the model's block selectors, masks, bend modes, defaults
  POST /api/render           {prompt, model, recipe, preview_steps?} -> a job
  POST /api/attention        {prompt, model, recipe, blocks} -> a job
  GET  /api/job/ID           the job's status, progress, result or error
  POST /api/cancel/ID        cancel a job
  POST /api/export           {prompt, model, recipe} -> {toml, command}
  POST /api/import           {toml, prompt?} -> {prompt, model, recipe}
Errors are ``{"error": {"field", "message"}}``, never a traceback.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlparse

from .jobs import Job, Worker
from .recipe_text import PageError, command_line, page_from_json, parse_page

MAX_BODY = 16 * 1024 * 1024
BASELINES_KEPT = 32


class Studio:
    """The server's state: loaded models, the worker, a cache of baseline images."""

    def __init__(self, preview_steps: int = 4, default_model: str = "toy"):
        from .render import Models

        if preview_steps < 1:
            raise ValueError(f"--preview-steps {preview_steps}: expected at least 1")
        self.preview_steps = preview_steps
        self.default_model = default_model
        self.models = Models()
        self.worker = Worker()
        self._baselines: Dict[Tuple, Any] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ requests
    def info(self, model: str) -> Dict[str, Any]:
        return self.worker.call(lambda: self._info(model))

    def _info(self, model: str) -> Dict[str, Any]:
        from ..bending.transforms import FILTERS, FLIPS, MODES
        from ..cli import default_size
        from ..masks import HALVES, QUADRANTS
        from ..models import downsampling
        from ..selectors import describe, names

        pipe, path = self.models.get(model)
        sites = describe(pipe.unet)
        return {
            "model": model,
            "selectors": names(sites),
            "blocks": [s.block_id for s in sites],
            "masks": [*HALVES, *QUADRANTS, "centre", "all"],
            "bend_modes": list(MODES),
            "flips": list(FLIPS),
            "filters": list(FILTERS),
            "size": default_size(pipe, path),
            "size_multiple": downsampling(pipe),
            "preview_steps": self.preview_steps,
        }

    def render(self, data: Dict[str, Any]) -> Job:
        """A preview (few steps) or a full render of baseline and technique."""
        page = page_from_json(data)
        preview = bool(data.get("preview"))

        def work(job: Job) -> Dict[str, Any]:
            from .render import (
                baseline_image,
                baseline_settings,
                parse,
                png_url,
                stepping,
                technique_image,
                with_steps,
            )

            pipe, path = self.models.get(page.model)
            parsed = parse(page, pipe, path)
            shown = parsed
            if preview:
                shown = with_steps(
                    parsed, min(self.preview_steps, parsed.settings.steps)
                )
            total = shown.settings.steps
            key = (page.model, repr(baseline_settings(shown)))
            with self._lock:
                base = self._baselines.get(key)
            with stepping(pipe, lambda i, n: job.progress(job.phase, i, n), total):
                if base is None:
                    job.progress("baseline", 0, total)
                    base = baseline_image(pipe, shown)
                    with self._lock:
                        self._baselines[key] = base
                        while len(self._baselines) > BASELINES_KEPT:
                            self._baselines.pop(next(iter(self._baselines)))
                job.progress("technique", 0, total)
                image, done = technique_image(pipe, shown)
            return {
                "baseline": png_url(base),
                "technique": png_url(image),
                "steps": total,
                "preview": preview,
                "applied": done,
                "toml": parsed.toml,
            }

        return self.worker.submit("preview" if preview else "render", work)

    def attention(self, data: Dict[str, Any]) -> Job:
        """The recipe's render with capture: per-token maps per step."""
        page = page_from_json(data)
        blocks = data.get("blocks") or "all"
        if not isinstance(blocks, str):
            raise PageError("attention.blocks", "expected a block selector")

        def work(job: Job) -> Dict[str, Any]:
            from .render import attention, parse, stepping

            pipe, path = self.models.get(page.model)
            parsed = parse(page, pipe, path)
            total = parsed.settings.steps
            with stepping(pipe, lambda i, n: job.progress("capture", i, n), total):
                job.progress("capture", 0, total)
                return attention(pipe, parsed, blocks)

        return self.worker.submit("attention", work)

    def export(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """The page's recipe TOML (checked as the render would) and its command line."""
        from .render import parse

        page = page_from_json(data)

        def checked():
            pipe, path = self.models.get(page.model)
            return parse(page, pipe, path)

        loaded = self.models.loaded(page.model)
        if loaded is None:  # loading makes MLX arrays: on the worker's thread
            parsed = self.worker.call(checked)
        else:  # reading a loaded model's config needs no MLX work: answer now
            parsed = parse(page, *loaded)
        return {"toml": parsed.toml, "command": command_line(page)}

    def import_(self, data: Dict[str, Any]) -> Dict[str, Any]:
        text = data.get("toml") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise PageError("import", "expected the recipe's TOML text")
        page = parse_page(text, data.get("prompt") or "")
        return {"prompt": page.prompt, "model": page.model, "recipe": page.recipe}


# ----------------------------------------------------------------- handler
def _page_html() -> bytes:
    return resources.files(__package__).joinpath("page.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    studio: Studio
    server_version = "pulse-studio"

    def log_message(self, fmt, *args):  # quiet: the page polls
        pass

    # --------------------------------------------------------------- util
    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, field: str, message: str, status: int = 400) -> None:
        self._json({"error": {"field": field, "message": message}}, status)

    def _host_ok(self) -> bool:
        """Only local names in Host (no DNS-rebinding of the local server)."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost", "[::1]")

    def _body(self) -> Optional[Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._error("request", f"request larger than {MAX_BODY} bytes", 413)
            return None
        try:
            return json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            self._error("request", f"not valid JSON: {err}")
            return None

    def _job(self, job: Optional[Job]) -> None:
        if job is None:
            self._error("job", "no such job (finished jobs are kept a while)", 404)
        else:
            self._json(job.public())

    def _guarded(self, fn) -> None:
        from ..cli import CliError
        from ..pulse import PulseError
        from .recipe_text import section_of

        try:
            fn()
        except PageError as err:
            self._error(err.field, str(err))
        except (ValueError, OSError, CliError, PulseError) as err:
            self._error(section_of(str(err)), str(err))

    # ------------------------------------------------------------- routes
    def do_GET(self) -> None:
        if not self._host_ok():
            return self._error("host", "the studio answers on 127.0.0.1 only", 403)
        url = urlparse(self.path)
        if url.path in ("/", "/index.html"):
            return self._send(200, _page_html(), "text/html; charset=utf-8")
        if url.path == "/api/info":
            query = parse_qs(url.query)
            model = (query.get("model") or [self.studio.default_model])[0]
            return self._guarded(lambda: self._json(self.studio.info(model)))
        if url.path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon")
        if url.path.startswith("/api/job/"):
            return self._job(self.studio.worker.get(url.path.rsplit("/", 1)[1]))
        self._error("path", f"no such page: {url.path}", HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._error("host", "the studio answers on 127.0.0.1 only", 403)
        path = urlparse(self.path).path
        if path.startswith("/api/cancel/"):
            return self._job(self.studio.worker.cancel(path.rsplit("/", 1)[1]))
        routes = {
            "/api/render": lambda d: self.studio.render(d).public(),
            "/api/attention": lambda d: self.studio.attention(d).public(),
            "/api/export": self.studio.export,
            "/api/import": self.studio.import_,
        }
        if path not in routes:
            return self._error("path", f"no such API: {path}", HTTPStatus.NOT_FOUND)
        data = self._body()
        if data is not None:
            self._guarded(lambda: self._json(routes[path](data)))


def make_server(studio: Studio, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:port (0: a free port) for studio; not yet serving."""
    handler = type("StudioHandler", (Handler,), {"studio": studio})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server
