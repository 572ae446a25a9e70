"""pulse studio in a real headless Chromium: edit, preview, render, export, import, errors.

Needs Debian's chromium and chromium-driver (``apt-get install chromium
chromium-driver``) and selenium (the dev extra); skipped with the reason
otherwise, or an error when PULSE_REQUIRE_BROWSER=1 (CI). No browser is ever
downloaded: both paths are the system's, so Selenium Manager is never asked.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from pulse_plugin.studio.browser import CHROMIUM_FLAGS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (*CHROMIUM_FLAGS, "--window-size=1280,1100")

# CI sets PULSE_REQUIRE_BROWSER=1 so that a missing browser fails instead of skipping
REQUIRED = os.environ.get("PULSE_REQUIRE_BROWSER") == "1"
MISSING = None
if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    MISSING = "no chromium/chromedriver (apt-get install chromium chromium-driver)"
else:
    try:
        from selenium import webdriver
    except ImportError:
        MISSING = "selenium is not installed (pip install -e '.[dev]')"
if MISSING is not None:
    if REQUIRED:
        raise RuntimeError(f"PULSE_REQUIRE_BROWSER=1 but {MISSING}")
    pytest.skip(MISSING, allow_module_level=True)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def url():
    from pulse_plugin.studio.server import Studio, make_server

    server = make_server(Studio(preview_steps=3), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path_factory.mktemp("chromium-profile")
    options.add_argument(f"--user-data-dir={profile}")
    # Chromium does not start with OpenBLAS preloaded (as pytest may run here)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    service = Service(executable_path=DRIVER, env=env)
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def done_after(driver, previous, timeout=60, errors_pass=False):
    """Wait for a finished job newer than previous; its id. An error shown fails."""

    def finished(d):
        status = d.find_element(By.ID, "status")
        job = status.get_attribute("data-job")
        if d.find_element(By.ID, "error").is_displayed() and not errors_pass:
            raise AssertionError(d.find_element(By.ID, "error").text)
        return job if "done" in status.text and job and job != previous else False

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(finished)


def src(driver, element_id):
    return driver.find_element(By.ID, element_id).get_attribute("src")


def pixels(data_url_or_path) -> np.ndarray:
    if str(data_url_or_path).startswith("data:image/png;base64,"):
        raw = base64.b64decode(data_url_or_path.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    return np.asarray(Image.open(data_url_or_path).convert("RGB"))


def cli_render(prompt, recipe_text, tmp_path) -> np.ndarray:
    """The pixels ``pulse generate PROMPT --recipe`` writes for an exported recipe."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text)
    out = tmp_path / "cli.png"
    run = subprocess.run(
        [sys.executable, "-m", "pulse_plugin.cli", "generate", prompt]
        + ["--recipe", str(recipe), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return pixels(out)


def test_edit_preview_render_export_matches_cli(url, browser, tmp_path):
    d = browser
    d.get(url)
    job = done_after(d, None)  # the first preview

    prompt = d.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    job = done_after(d, job, errors_pass=True)  # the cleared prompt was an error
    panel = d.find_element(By.CSS_SELECTOR, '[data-section="inject"]')
    panel.find_element(By.CSS_SELECTOR, ".on").click()
    job = done_after(d, job)
    assert d.find_element(By.ID, "technique").get_attribute("data-preview") == "true"
    before = src(d, "technique")

    slider = panel.find_element(By.CSS_SELECTOR, '[data-key="weight"]')
    slider.send_keys(Keys.ARROW_LEFT * 6)  # 1.0 -> 0.7, one preview per key at most
    job = done_after(d, job)
    assert slider.get_attribute("value") == "0.7"
    assert src(d, "technique") != before, "the preview did not change with the slider"

    d.find_element(By.ID, "render").click()
    job = done_after(d, job)
    shown = d.find_element(By.ID, "technique")
    assert shown.get_attribute("data-preview") == "false"
    assert shown.get_attribute("data-steps") == "20"
    page_png = pixels(shown.get_attribute("src"))

    d.find_element(By.ID, "export").click()
    WebDriverWait(d, 10).until(
        lambda d: "[[inject]]" in d.find_element(By.ID, "toml").get_attribute("value")
    )
    text = d.find_element(By.ID, "toml").get_attribute("value")
    assert "weight = 0.7" in text
    assert np.array_equal(
        cli_render(PROMPT, text, tmp_path), page_png
    ), "page and CLI differ"

    # import: the same recipe with another seed and weight fills the form
    edited = text.replace("seed = 0", "seed = 3").replace(
        "weight = 0.7", "weight = 1.5"
    )
    box = d.find_element(By.ID, "toml")
    box.clear()
    d.execute_script("arguments[0].value = arguments[1]", box, edited)
    d.find_element(By.ID, "import").click()
    WebDriverWait(d, 10).until(
        lambda d: d.find_element(By.ID, "seed").get_attribute("value") == "3"
    )
    assert slider.get_attribute("value") == "1.5"
    assert panel.find_element(By.CSS_SELECTOR, ".on").is_selected()
    job = done_after(d, job)
    d.find_element(By.ID, "export").click()  # what was imported is what is on screen
    WebDriverWait(d, 10).until(
        lambda d: d.find_element(By.ID, "toml").get_attribute("value") == edited
    )


def test_error_names_the_field(url, browser):
    d = browser
    d.get(url)
    job = done_after(d, None)
    size = d.find_element(By.ID, "size")
    size.clear()
    size.send_keys("33")
    error = d.find_element(By.ID, "error")
    WebDriverWait(d, 30).until(lambda d: error.is_displayed())
    assert error.text.startswith("generate.size:"), error.text
    assert "Traceback" not in error.text
    assert "bad" in size.get_attribute("class")
    size.clear()
    size.send_keys("32")
    done_after(d, job, errors_pass=True)
    assert not error.is_displayed()


IMPORTED = """\
# pulse studio recipe. Render it with:
#   pulse generate 'a blue square on the right' --recipe recipe.toml
# prompt = "a blue square on the right"
# model = "toy"

[generate]
negative = ""
steps = 60
cfg = 7.3
seed = 5
size = 32

[[inject]]
block = "detail"
prompt = "red"
weight = 0.35

[[inject]]
block = "mid"
prompt = "green"

[[reweight]]
phrase = "blue"
scale = 3

[[keep_only]]
phrases = ["square"]
"""


def test_import_shows_what_it_can_keeps_the_rest_and_exports_it_unchanged(url, browser):
    d = browser
    d.get(url)
    job = done_after(d, None)
    box = d.find_element(By.ID, "toml")
    d.execute_script("arguments[0].value = arguments[1]", box, IMPORTED)
    d.find_element(By.ID, "import").click()
    WebDriverWait(d, 10).until(
        lambda d: d.find_element(By.ID, "seed").get_attribute("value") == "5"
    )
    assert d.find_element(By.ID, "steps").get_attribute("value") == "60"
    assert d.find_element(By.ID, "cfg").get_attribute("value") == "7.3"
    inject = d.find_element(By.CSS_SELECTOR, '[data-section="inject"]')
    weight = inject.find_element(By.CSS_SELECTOR, '[data-key="weight"]')
    assert weight.get_attribute("value") == "0.35"
    # the reweight entry leaves out the panel's block: kept aside, shown as such
    reweight = d.find_element(By.CSS_SELECTOR, '[data-section="reweight"]')
    assert not reweight.find_element(By.CSS_SELECTOR, ".on").is_selected()
    extras = d.find_element(By.ID, "extras").text
    assert "keep_only" in extras and "reweight" in extras and "mid" in extras
    done_after(d, job)
    d.find_element(By.ID, "export").click()
    WebDriverWait(d, 10).until(
        lambda d: d.find_element(By.ID, "toml").get_attribute("value") == IMPORTED
    )


def test_a_drawn_region_mask_renders_and_exports_as_an_array(url, browser):
    d = browser
    d.get(url)
    job = done_after(d, None)
    panel = d.find_element(By.CSS_SELECTOR, '[data-section="region"]')
    panel.find_element(By.CSS_SELECTOR, ".on").click()
    job = done_after(d, job)
    before = src(d, "technique")
    Select(d.find_element(By.ID, "region-mask")).select_by_value("drawn")
    canvas = d.find_element(By.ID, "draw")
    WebDriverWait(d, 10).until(lambda d: canvas.is_displayed())
    strokes = ActionChains(d).move_to_element_with_offset(canvas, -40, -60)
    strokes.click_and_hold().move_by_offset(0, 120).release().perform()  # a column
    job = done_after(d, job)
    assert src(d, "technique") != before
    d.find_element(By.ID, "export").click()
    WebDriverWait(d, 10).until(
        lambda d: "mask = [[0, " in d.find_element(By.ID, "toml").get_attribute("value")
    )
    text = d.find_element(By.ID, "toml").get_attribute("value")
    line = next(row for row in text.splitlines() if row.startswith("mask = "))
    painted = np.array(json.loads(line.split("=", 1)[1]))
    assert painted.shape == (16, 16) and 0 < painted.sum() < painted.size
    assert painted[:, 3].sum() >= 12  # the stroke's column, top to bottom


def test_pag_panel_and_prompt_weights_render_export_and_import(url, browser, tmp_path):
    d = browser
    d.get(url)
    job = done_after(d, None)
    marked = "a (red:1.5) circle on the left"
    prompt = d.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(marked)
    Select(d.find_element(By.ID, "weights")).select_by_value("a1111")
    panel = d.find_element(By.CSS_SELECTOR, '[data-section="pag"]')
    assert (
        Select(
            panel.find_element(By.CSS_SELECTOR, '[data-key="block"]')
        ).first_selected_option.text
        == "mid"
    )
    panel.find_element(By.CSS_SELECTOR, ".on").click()
    job = done_after(d, job, errors_pass=True)
    d.find_element(By.ID, "render").click()
    job = done_after(d, job)
    page_png = pixels(src(d, "technique"))

    d.find_element(By.ID, "export").click()
    WebDriverWait(d, 10).until(
        lambda d: "[[pag]]" in d.find_element(By.ID, "toml").get_attribute("value")
    )
    text = d.find_element(By.ID, "toml").get_attribute("value")
    assert 'weights = "a1111"' in text and 'block = "mid"' in text
    assert np.array_equal(
        cli_render(marked, text, tmp_path), page_png
    ), "page and CLI differ"

    edited = text.replace('weights_mode = "attention"', 'weights_mode = "embedding"')
    assert edited != text
    box = d.find_element(By.ID, "toml")
    box.clear()
    d.execute_script("arguments[0].value = arguments[1]", box, edited)
    d.find_element(By.ID, "import").click()
    WebDriverWait(d, 10).until(
        lambda d: d.find_element(By.ID, "weights_mode").get_attribute("value")
        == "embedding"
    )
    assert panel.find_element(By.CSS_SELECTOR, ".on").is_selected()
