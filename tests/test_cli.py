"""The pulse command, end to end, on a small random model folder of the toy layout."""

import json

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from pulse_plugin import cli, models
from pulse_plugin.lora import synth
from pulse_plugin.models import load_pipeline
from pulse_plugin.toy import folder, train

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sd):
    cfg = train.ToyConfig(
        unet_channels=(32, 32),
        vae_channels=(32, 32),
        text_dims=32,
        heads=2,
    )
    pipe, configs = train.build(sd, cfg)
    out = tmp_path_factory.mktemp("model") / "small"
    folder.save_pipeline(
        pipe, out, configs.unet, configs.text, configs.vae, sample_size=16
    )
    return out


def run(*argv):
    return cli.main([str(a) for a in argv])


def pixels(path):
    return np.array(Image.open(path))


@pytest.mark.parametrize("command", [[], ["generate"], ["demo"], ["blocks"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([*command, "--help"])
    assert exit.value.code == 0 and "usage: pulse" in capsys.readouterr().out


def test_generate_baseline_and_compare(model_dir, tmp_path):
    args = ["generate", PROMPT, "--model", model_dir, "--steps", 2]
    assert run(*args, "-o", tmp_path / "base.png") == 0
    base = pixels(tmp_path / "base.png")
    assert base.shape == (16, 16, 3)
    inject = "block=all,prompt=a blue square"
    assert run(*args, "--inject", inject, "--compare", "-o", tmp_path / "inj.png") == 0
    assert not np.array_equal(base, pixels(tmp_path / "inj.png"))
    compare = pixels(
        tmp_path / "inj-compare.png"
    )  # baseline | technique, 8x, label strip
    assert compare.shape == (16 * 8 + 16, 2 * 16 * 8, 3)
    left = compare[16:, : 16 * 8][::8, ::8]
    assert np.array_equal(left, base)


def test_empty_window_is_bit_identical_to_baseline(model_dir, tmp_path):
    args = ["generate", PROMPT, "--model", model_dir, "--steps", 3]
    assert run(*args, "-o", tmp_path / "base.png") == 0
    empty = "block=all,prompt=a blue square,sigma_start=0.001,sigma_end=0.0"
    with pytest.warns(UserWarning, match="sigma") as caught:
        assert run(*args, "--inject", empty, "-o", tmp_path / "w.png") == 0
    assert len(caught) == 1  # one warning per problem
    assert np.array_equal(pixels(tmp_path / "base.png"), pixels(tmp_path / "w.png"))


def test_bad_input_names_the_field(model_dir, tmp_path, capsys):
    assert (
        run(
            "generate",
            PROMPT,
            "--model",
            model_dir,
            "--reweight",
            "phrase=purple,scale=2",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "reweight[0]" in err and "purple" in err
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[inject]]\nblock = "all"\nprompt = "blue"\nwieght = 2\n')
    assert run("generate", PROMPT, "--model", model_dir, "--recipe", recipe) == 2
    assert "unknown field 'wieght'" in capsys.readouterr().err
    assert run("generate", PROMPT, "--model", tmp_path) == 2
    assert "not a diffusers-layout folder" in capsys.readouterr().err
    assert run("generate", PROMPT, "--model", model_dir, "--steps", 0) == 2


def flip_circle(tmp_path, apply_to_output: bool):
    """A bend file flipping the map of "circle"."""
    bend = tmp_path / "bend.json"
    configs = [{"token": "circle", "mode": "flip"}]
    bend.write_text(
        json.dumps({"apply_to_output": apply_to_output, "configs": configs})
    )
    return bend


def test_bend_and_capture_write_a_gallery(model_dir, tmp_path):
    bend = flip_circle(tmp_path, apply_to_output=True)
    args = [
        "generate",
        "a red (circle) on the left",
        "--model",
        model_dir,
        "--steps",
        2,
    ]
    assert (
        run(
            *args,
            "--bend",
            bend,
            "--capture",
            tmp_path / "gallery",
            "-o",
            tmp_path / "bent.png",
        )
        == 0
    )
    runs = [p for p in (tmp_path / "gallery").iterdir() if p.is_dir()]
    assert len(runs) == 1
    meta = json.loads((runs[0] / "metadata.json").read_text())
    assert (
        meta["clean_prompt"] == PROMPT.replace("left", "left")
        and meta["check"]["max_row_sum_error"] < 1e-5
    )
    assert (runs[0] / "evolution.gif").is_file() and (
        tmp_path / "gallery" / "index.html"
    ).is_file()
    assert run(*args, "-o", tmp_path / "plain.png") == 0
    assert not np.array_equal(
        pixels(tmp_path / "bent.png"), pixels(tmp_path / "plain.png")
    )


def test_lora_weight_zero_is_the_identity_and_nonzero_changes(model_dir, sd, tmp_path):
    pipe = models.load_pipeline(model_dir, sd)
    paths = synth.target_paths(pipe.unet)
    tensors = synth.random_tensors(pipe.unet, "unet", paths, rank=2, std=0.5)
    lora_file = tmp_path / "style.safetensors"
    mx.save_safetensors(str(lora_file), tensors)
    args = ["generate", PROMPT, "--model", model_dir, "--steps", 2]
    assert run(*args, "-o", tmp_path / "base.png") == 0
    assert run(*args, "--lora", f"{lora_file}:0", "-o", tmp_path / "zero.png") == 0
    assert run(*args, "--lora", f"{lora_file}:1", "-o", tmp_path / "one.png") == 0
    assert np.array_equal(pixels(tmp_path / "base.png"), pixels(tmp_path / "zero.png"))
    assert not np.array_equal(
        pixels(tmp_path / "base.png"), pixels(tmp_path / "one.png")
    )


def test_blocks_lists_sites_and_every_selector(model_dir, capsys):
    from pulse_plugin import selectors

    assert run("blocks", "--model", model_dir) == 0
    out = capsys.readouterr().out
    assert "down.0.0.0" in out and "mid.0.0" in out
    pipe = load_pipeline(model_dir)
    listed = selectors.names(selectors.describe(pipe.unet))
    for name in ("structure", "mid-level", "detail", "level:0", "down", "middle:0"):
        assert name in listed
    for name in listed:
        assert f"| `{name}` |" in out, name


def test_demo_writes_every_technique(model_dir, tmp_path):
    from pulse_plugin.demo import DEMOS

    assert (
        run("demo", "--model", model_dir, "--steps", 2, "--out", tmp_path / "demo") == 0
    )
    index = (tmp_path / "demo" / "index.html").read_text()
    for demo in DEMOS:
        assert (tmp_path / "demo" / f"{demo.name}.png").is_file()
        assert demo.title in index


def test_capture_and_bend_compose_with_injection(model_dir, tmp_path):
    """Recorder and bends see the base prompt's tokens only, whatever the chain order."""
    bend = flip_circle(tmp_path, apply_to_output=False)
    args = [
        "generate",
        "a red (circle) on the left",
        "--model",
        model_dir,
        "--steps",
        2,
    ]
    inject = ["--inject", "block=all,prompt=a blue square triangle on the right"]
    plain = [
        "generate",
        PROMPT,
        "--model",
        model_dir,
        "--steps",
        2,
    ]  # parentheses removed
    assert run(*plain, *inject, "-o", tmp_path / "inj.png") == 0
    assert (
        run(
            *args,
            *inject,
            "--bend",
            bend,
            "--capture",
            tmp_path / "g",
            "-o",
            tmp_path / "both.png",
        )
        == 0
    )
    assert np.array_equal(pixels(tmp_path / "inj.png"), pixels(tmp_path / "both.png"))
    (run_dir,) = [p for p in (tmp_path / "g").iterdir() if p.is_dir()]
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert len(meta["tokens"]) == 8  # BOS a red circle on the left EOS
    assert meta["check"]["max_row_sum_error"] < 1e-5
    assert np.load(run_dir / "maps.npz")["maps"].shape == (
        2,
        8,
        8,
        8,
    )  # steps, tokens, H, W


def test_compare_baseline_drops_the_bend_parentheses(model_dir, tmp_path):
    """A visualise-only bend leaves the image unchanged: both halves of --compare match."""
    bend = tmp_path / "bend.json"
    bend.write_text(json.dumps({"configs": [{"token": "circle", "mode": "flip"}]}))
    args = [
        "generate",
        "a red (circle) on the left",
        "--model",
        model_dir,
        "--steps",
        2,
    ]
    assert run(*args, "--bend", bend, "--compare", "-o", tmp_path / "v.png") == 0
    compare = pixels(tmp_path / "v-compare.png")[16:]
    half = compare.shape[1] // 2
    assert np.array_equal(compare[:, :half], compare[:, half:])
