"""pulse studio without a browser: recipe text, renders equal to the CLI, jobs, errors."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from pulse_plugin import cli
from pulse_plugin.studio.jobs import Worker
from pulse_plugin.studio.recipe_text import Page, PageError, parse_page, to_toml
from pulse_plugin.studio.server import Studio, make_server

PROMPT = "a red circle on the left"
DRAWN = [[int(x >= 4) for x in range(8)] for _ in range(8)]  # a painted mask


def pixels(data_url_or_path) -> np.ndarray:
    if str(data_url_or_path).startswith("data:image/png;base64,"):
        raw = base64.b64decode(data_url_or_path.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    return np.asarray(Image.open(data_url_or_path).convert("RGB"))


@pytest.fixture(scope="module")
def studio():
    return Studio(preview_steps=2)


def finished(studio, job):
    assert studio.worker.wait_idle(300)
    return job


def every_technique(lora_file=None):
    recipe = {
        "generate": {"steps": 6, "cfg": 5.0, "seed": 3},
        "inject": [{"block": "detail", "prompt": "blue", "weight": 0.8}],
        "reweight": [{"phrase": "red", "scale": 1.5, "block": "all"}],
        "region": [{"prompt": "green", "mask": DRAWN, "weight": 1.0}],
        "self_attention": [
            {"query_region": "left", "key_region": "right", "scale": 2.0}
        ],
        "bend": [{"token": "circle", "mode": "translate", "dx": 0.25, "dy": 0.0}],
    }
    if lora_file is not None:
        recipe["lora"] = [{"path": str(lora_file), "weight": 0.7}]
    return recipe


@pytest.fixture(scope="module")
def lora_file(studio, tmp_path_factory):
    from pulse_plugin.lora import synth

    def write():
        pipe, _ = studio.models.get("toy")
        paths = synth.target_paths(pipe.unet)
        tensors = synth.random_tensors(pipe.unet, "unet", paths, rank=2, std=0.3)
        path = tmp_path_factory.mktemp("lora") / "style.safetensors"
        mx.save_safetensors(str(path), tensors)
        return path

    return studio.worker.call(write)  # MLX work stays on the studio's thread


# ------------------------------------------------------------- recipe text
def test_toml_round_trip_keeps_prompt_model_and_every_entry():
    page = Page(
        'a "quoted" prompt, naïve',
        "/models/my sd",
        {
            "generate": {"steps": 4, "cfg": 7.5, "seed": 2, "negative": ""},
            "inject": [{"block": "all", "prompt": "blue", "sigma_start": None}],
            "keep_only": [{"phrases": ["circle"], "steps": [0, 3]}],
        },
    )
    text = to_toml(page)
    assert "sigma_start" not in text  # TOML has no null: unset fields are left out
    assert "pulse generate 'a \"quoted\" prompt, naïve' --recipe recipe.toml" in text
    back = parse_page(text)
    assert (back.prompt, back.model) == (page.prompt, page.model)
    assert back.recipe["inject"] == [{"block": "all", "prompt": "blue"}]
    assert back.recipe["keep_only"] == page.recipe["keep_only"]
    assert back.recipe["generate"] == page.recipe["generate"]


def test_bad_values_and_sections_name_the_field():
    with pytest.raises(PageError) as err:
        to_toml(Page("x", "toy", {"inject": [{"weight": float("nan")}]}))
    assert err.value.field == "inject[0].weight"
    with pytest.raises(PageError) as err:
        parse_page("[[colour]]\nred = 1\n")
    assert err.value.field == "recipe" and "colour" in str(err.value)
    with pytest.raises(PageError) as err:  # never rendered without it: refused
        parse_page('[generate]\nsteps = 4\nprompt = "a red circle"\n')
    assert err.value.field == "generate.prompt"
    with pytest.raises(PageError) as err:
        parse_page("[[inject]\n")
    assert err.value.field == "recipe" and "not valid TOML" in str(err.value)


# ------------------------------------------------ the same image as the CLI
def test_full_render_equals_pulse_generate_recipe_for_every_technique(
    studio, lora_file, tmp_path
):
    req = {"prompt": PROMPT, "model": "toy", "recipe": every_technique(lora_file)}
    job = finished(studio, studio.render(req))
    assert job.status == "done", job.error
    assert len(job.result["applied"]) == 6  # one line per technique
    page_image = pixels(job.result["technique"])
    text = studio.export(req)["toml"]
    assert text == job.result["toml"]
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = tmp_path / "cli.png"
    argv = ["generate", PROMPT, "--recipe", str(recipe), "-o", str(out)]
    assert cli.main(argv) == 0
    assert np.array_equal(pixels(out), page_image)
    base = tmp_path / "base.png"
    steps = ["--steps", "6", "--cfg", "5", "--seed", "3"]
    assert cli.main(["generate", PROMPT, *steps, "-o", str(base)]) == 0
    assert np.array_equal(pixels(base), pixels(job.result["baseline"]))
    assert not np.array_equal(pixels(base), page_image)


def test_pag_and_prompt_weights_render_as_pulse_generate_does(studio, tmp_path):
    marked = "a (red:1.5) circle on the left"
    generate = {"steps": 4, "cfg": 2.0, "seed": 1, "weights": "a1111"}
    recipe = {"generate": generate, "pag": [{"scale": 2.0, "block": "mid"}]}
    job = finished(studio, studio.render({"prompt": marked, "recipe": recipe}))
    assert job.status == "done", job.error
    assert len(job.result["applied"]) == 2  # PAG and the prompt's weights
    (tmp_path / "recipe.toml").write_text(job.result["toml"])
    out = tmp_path / "cli.png"
    argv = ["generate", marked, "--recipe", str(tmp_path / "recipe.toml")]
    assert cli.main([*argv, "-o", str(out)]) == 0
    assert np.array_equal(pixels(out), pixels(job.result["technique"]))
    base = tmp_path / "base.png"  # the marks removed, nothing applied
    steps = ["--steps", "4", "--cfg", "2", "--seed", "1"]
    assert cli.main(["generate", PROMPT, *steps, "-o", str(base)]) == 0
    assert np.array_equal(pixels(base), pixels(job.result["baseline"]))
    assert not np.array_equal(pixels(base), pixels(out))


def test_weights_mode_without_weights_is_an_error_not_ignored(studio):
    recipe = {"generate": {"steps": 2, "weights_mode": "embedding"}}
    job = finished(studio, studio.render({"prompt": PROMPT, "recipe": recipe}))
    assert job.status == "error"
    assert job.error["field"] == "generate.weights_mode"
    assert "without weights" in job.error["message"]


def test_preview_uses_the_preview_steps_and_changes_with_a_slider(studio):
    recipe = {"generate": {"steps": 20}, "inject": [{"block": "all", "prompt": "blue"}]}
    req = {"prompt": PROMPT, "recipe": recipe, "preview": True}
    first = finished(studio, studio.render(req))
    recipe["inject"][0]["weight"] = 0.4
    second = finished(studio, studio.render(req))
    assert first.result["steps"] == second.result["steps"] == 2
    assert first.result["baseline"] == second.result["baseline"]
    assert first.result["technique"] != second.result["technique"]
    assert "steps = 20" in second.result["toml"]  # the export keeps the full render


# ------------------------------------------------------------------- jobs
def test_the_latest_request_wins_and_a_running_job_stops_at_its_next_step():
    worker = Worker()
    started, release = threading.Event(), threading.Event()

    def slow(job):
        started.set()
        release.wait(30)
        for i in range(5):
            job.progress("technique", i + 1, 5)
        return {"n": 5}

    first = worker.submit("preview", slow)
    assert started.wait(30)
    middle = worker.submit("preview", lambda job: {"n": 1})
    last = worker.submit("preview", lambda job: {"n": 2})
    release.set()
    assert worker.wait_idle(30)
    assert (first.status, first.step) == ("cancelled", 1)
    assert middle.status == "cancelled" and middle.result is None
    assert last.status == "done" and last.result == {"n": 2}


def test_a_cancelled_render_leaves_the_model_as_it_was(studio, lora_file):
    from pulse_plugin.studio.render import parse, stepping, technique_image

    req = {"prompt": PROMPT, "model": "toy", "recipe": every_technique(lora_file)}
    before = finished(studio, studio.render(req)).result["technique"]
    page = Page(PROMPT, "toy", every_technique(lora_file))

    def cancelled_at_step_two(job):
        pipe, path = studio.models.get("toy")
        parsed = parse(page, pipe, path)

        def on_step(i, n):
            if i == 2:
                job.cancel.set()
            job.progress("technique", i, n)

        with stepping(pipe, on_step, parsed.settings.steps):
            technique_image(pipe, parsed)
        return {}

    job = finished(studio, studio.worker.submit("render", cancelled_at_step_two))
    assert (job.status, job.step) == ("cancelled", 2)
    pipe, _ = studio.models.get("toy")
    assert "generate_latents" not in vars(pipe)
    again = finished(studio, studio.render(req))
    assert again.result["technique"] == before  # no LoRA or hook left behind


def test_attention_gives_one_map_per_word_and_step_for_the_chosen_blocks(studio):
    req = {"prompt": PROMPT, "recipe": {"generate": {"steps": 3}}, "blocks": "mid"}
    job = finished(studio, studio.attention(req))
    assert job.status == "done", job.error
    r = job.result
    assert r["words"] == ["a", "red", "circle", "on", "the", "left"]
    assert r["blocks"] == ["mid.0.0"] and len(r["steps"]) == 3
    assert all(len(s["maps"]) == 6 for s in r["steps"])
    assert pixels(r["steps"][0]["maps"][1]).shape[0] >= 128
    assert pixels(r["colour_bar"]).shape[1] >= 128
    bad = finished(studio, studio.attention({**req, "blocks": "nowhere"}))
    assert bad.status == "error" and bad.error["field"] == "attention.blocks"


# ----------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def port(studio):
    server = make_server(studio, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def call(port, method, path, body=None, host="127.0.0.1"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Host": f"{host}:{port}"})
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read())


def job_error(studio, port, body):
    status, job = call(port, "POST", "/api/render", body)
    assert status == 200, job
    studio.worker.wait_idle(300)
    status, job = call(port, "GET", f"/api/job/{job['id']}")
    assert job["status"] == "error"
    return job["error"]


def test_http_errors_name_the_field_and_never_carry_a_traceback(studio, port):
    status, reply = call(port, "POST", "/api/render", b"{not json")
    assert status == 400 and reply["error"]["field"] == "request"
    status, reply = call(port, "POST", "/api/render", {"prompt": " "})
    assert status == 400 and reply["error"]["field"] == "prompt"
    status, reply = call(port, "GET", "/api/info?model=/no/such/model")
    assert status == 400 and reply["error"]["field"] == "model"
    status, reply = call(port, "GET", "/", host="evil.example")
    assert status == 403
    cases = {
        "reweight.phrase": {"reweight": [{"phrase": "purple", "scale": 2}]},
        "inject.block": {"inject": [{"block": "sideways", "prompt": "blue"}]},
        "generate.size": {"generate": {"size": 30}},
        "generate.steps": {"generate": {"steps": 0}},
        "bend.token": {"bend": [{"token": "square", "mode": "flip"}]},
        "lora.path": {"lora": [{"path": "/no/such.safetensors"}]},
    }
    for field, recipe in cases.items():
        error = job_error(studio, port, {"prompt": PROMPT, "recipe": recipe})
        assert error["field"] == field, error
        assert "Traceback" not in error["message"]
        assert field.split(".")[0] in error["message"][:30]  # named first
