"""Take the README's screenshot of pulse studio in headless Chromium (docs/studio.png).

Starts the studio on a free port with the toy model, turns injection on,
renders, captures the attention maps, and saves the page as a palette PNG.
Needs Debian's chromium and chromium-driver and selenium (the dev extra).

Run: python tools/studio_screenshot.py [--out docs/studio.png]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from pulse_plugin.studio.browser import CHROMIUM_FLAGS  # noqa: E402
from pulse_plugin.studio.server import Studio, make_server  # noqa: E402

FLAGS = [*CHROMIUM_FLAGS, "--hide-scrollbars", "--window-size=1280,1150"]


def wait_done(d, kind: str, timeout: float = 120) -> None:
    WebDriverWait(d, timeout, poll_frequency=0.1).until(
        lambda d: d.find_element(By.ID, "status").text.startswith(f"{kind} done")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/studio.png")
    args = ap.parse_args()
    server = make_server(Studio(), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp()}"]:
        options.add_argument(flag)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    service = Service(executable_path="/usr/bin/chromedriver", env=env)
    d = webdriver.Chrome(service=service, options=options)
    try:
        d.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_done(d, "preview")
        panel = d.find_element(By.CSS_SELECTOR, '[data-section="inject"]')
        panel.find_element(By.CSS_SELECTOR, ".on").click()
        blocks = panel.find_element(By.CSS_SELECTOR, '[data-key="block"]')
        blocks.send_keys("detail")  # the toy draws colour at its 8x8 level
        panel.find_element(By.CSS_SELECTOR, '[data-key="prompt"]').clear()
        panel.find_element(By.CSS_SELECTOR, '[data-key="prompt"]').send_keys("green")
        d.find_element(By.ID, "capture").click()
        wait_done(d, "attention")
        d.find_element(By.ID, "render").click()
        wait_done(d, "render")
        d.find_element(By.ID, "export").click()
        WebDriverWait(d, 10).until(
            lambda d: d.find_element(By.ID, "toml").get_attribute("value")
        )
        png = d.get_screenshot_as_png()
    finally:
        d.quit()
        server.shutdown()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB, {img.width}x{img.height})")


if __name__ == "__main__":
    main()
