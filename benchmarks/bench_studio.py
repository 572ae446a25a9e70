"""pulse studio's preview latency: slider move -> new preview on screen, over HTTP.

Starts the studio on 127.0.0.1 (a free port) with the toy model, then times
what the page does: POST /api/render (a preview) and poll /api/job/ID every
10 ms until it is done, PNGs included. "slider" changes a technique only (the
baseline comes from the cache); "prompt" changes the prompt (both images
rendered, a new seed each time so nothing comes from the cache); "render" is a full 20-step render of both.

Run: LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/bench_studio.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse_plugin.studio.server import Studio, make_server  # noqa: E402

PROMPTS = ["a red circle on the left", "a blue square on the right"]


def post_and_wait(port: int, body: dict) -> float:
    """Seconds from the request to the finished job (as the page polls)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    conn.request("POST", "/api/render", json.dumps(body))
    job = json.loads(conn.getresponse().read())
    while True:
        conn.request("GET", f"/api/job/{job['id']}")
        job = json.loads(conn.getresponse().read())
        if job["status"] in ("done", "error", "cancelled"):
            break
        time.sleep(0.01)
    if job["status"] != "done":
        raise SystemExit(f"render {job['status']}: {job['error']}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--preview-steps", type=int, default=4)
    args = ap.parse_args()
    server = make_server(Studio(preview_steps=args.preview_steps), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def body(prompt: str, weight: float, preview: bool = True, seed: int = 0) -> dict:
        inject = [{"block": "all", "prompt": "green", "weight": weight}]
        recipe = {"generate": {"steps": 20, "seed": seed}, "inject": inject}
        return {"prompt": prompt, "recipe": recipe, "preview": preview}

    post_and_wait(port, body(PROMPTS[0], 1.0))  # warm-up: model load, first graph
    times = {"slider": [], "prompt": [], "render": []}
    for r in range(args.rounds):
        times["slider"].append(post_and_wait(port, body(PROMPTS[0], 0.5 + 0.05 * r)))
        seed = 1 + r  # a new baseline each time, never from the cache
        times["prompt"].append(post_and_wait(port, body(PROMPTS[r % 2], 1, seed=seed)))
    for r in range(max(2, args.rounds // 3)):
        times["render"].append(post_and_wait(port, body(PROMPTS[0], 0.3 + r, False)))
    load = os.getloadavg()[0]
    print(
        f"toy model, {args.preview_steps}-step preview, {os.cpu_count()} cores, "
        f"load average {load:.1f}, OpenBLAS preloaded: "
        f"{'yes' if 'openblas' in os.environ.get('LD_PRELOAD', '') else 'no'}"
    )
    print("| request | median s | min s | max s | n |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, t in times.items():
        print(
            f"| {name} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} "
            f"| {len(t)} |"
        )
    server.shutdown()


if __name__ == "__main__":
    main()
