"""pulse edit, --pag and --weights end to end, SD and SDXL: the same images as the Python API."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import model_dir, run  # noqa: F401 (the fixture)

from pulse_plugin import cli
from pulse_plugin.pulse import Pulse
from pulse_plugin.sampling import decode, final_latents, to_uint8

SOURCE, EDIT = "a red circle on the left", "a blue circle on the left"
SIZE, STEPS = 16, 2
SDXL = Path(__file__).parent / "fixtures" / "reference" / "sdxl"  # written by diffusers


@pytest.fixture(params=["sd", "sdxl"])
def model(request):
    """An SD-shaped folder (saved here) and an SDXL folder (saved by diffusers)."""
    return request.getfixturevalue("model_dir") if request.param == "sd" else SDXL


def _images(pipe, prompt, n=1, configure=None, cfg=7.5):
    with Pulse(pipe) as pulse:
        if configure is not None:
            configure(pulse)
        x = final_latents(
            pipe,
            prompt,
            n_images=n,
            num_steps=STEPS,
            cfg_weight=cfg,
            latent_size=cli.latent_for(pipe, SIZE),
            seed=0,
        )
    return [to_uint8(i) for i in decode(pipe, x)]


def test_edit_writes_the_api_edit_and_the_comparison(model, tmp_path):
    out = tmp_path / "edit.png"
    args = ["edit", SOURCE, EDIT, "--model", model, "--steps", STEPS, "--size", SIZE]
    assert run(*args, "--self-window", "5:", "--compare", "-o", out) == 0
    pipe = cli.load_model(str(model))[0]

    def configure(pulse):
        pulse.prompt_to_prompt(SOURCE, EDIT, self_window=(5.0, None))

    source, edited = _images(pipe, SOURCE, 2, configure)
    assert np.array_equal(np.array(Image.open(out)), edited)
    k = cli.display_scale(SIZE)
    compare = np.array(Image.open(tmp_path / "edit-compare.png"))
    assert compare.shape[1] == 2 * SIZE * k  # source | edit
    assert np.array_equal(compare[-SIZE * k :, : SIZE * k][::k, ::k], source)
    assert np.array_equal(compare[-SIZE * k :, SIZE * k :][::k, ::k], edited)


def test_pag_and_weights_flags_are_the_api(model, tmp_path):
    pipe = cli.load_model(str(model))[0]
    base = ["generate", "--model", model, "--steps", STEPS, "--size", SIZE]
    assert (
        run(*base, SOURCE, "--pag", "scale=2,block=mid", "-o", tmp_path / "p.png") == 0
    )
    pag = _images(pipe, SOURCE, configure=lambda p: p.perturbed_attention(2.0))[0]
    assert np.array_equal(np.array(Image.open(tmp_path / "p.png")), pag)
    marked = "a (red:1.5) circle on the left"
    assert run(*base, marked, "--weights", "a1111", "-o", tmp_path / "w.png") == 0
    weighted = _images(
        pipe, SOURCE, configure=lambda p: p.prompt_weights(marked) and None
    )[0]
    assert np.array_equal(np.array(Image.open(tmp_path / "w.png")), weighted)
    assert not np.array_equal(weighted, _images(pipe, SOURCE)[0])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["edit", SOURCE, "a red big circle on the left"], "same token count"),
        (["edit", SOURCE, EDIT, "--window", "3"], "expected START:END"),
        (["edit", SOURCE, EDIT, "--reweight", "red"], "expected WORD=SCALE"),
        (["edit", SOURCE, EDIT, "--local-blend", "dog"], "in neither prompt"),
        (["generate", "a (red) circle", "--weights", "compel", "--pag", "s=1"], "s"),
        (["generate", SOURCE, "--pag", "scale=nan"], "pag[0].scale"),
        (["generate", SOURCE, "--weights-mode", "embedding"], "given without weights"),
    ],
)
def test_bad_input_exits_2(model_dir, tmp_path, capsys, argv, message):  # noqa: F811
    assert run(*argv, "--model", model_dir, "-o", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err
    assert not (tmp_path / "x.png").exists()


def test_weights_and_bends_do_not_mix(model_dir, tmp_path, capsys):  # noqa: F811
    bends = tmp_path / "b.toml"
    bends.write_text('[[bends]]\ntoken = "red"\nmode = "flip"\n')
    argv = ["generate", "a (red) circle", "--weights", "a1111", "--bend", bends]
    assert run(*argv, "--model", model_dir, "-o", tmp_path / "x.png") == 2
    assert "use one of them" in capsys.readouterr().err


def test_a_modified_upstream_is_one_line_exit_2(tmp_path):
    """pulse refuses an upstream that fails the pinned hashes: exit 2, no traceback."""
    from pulse_plugin import upstream

    pristine = tmp_path / "pristine"
    upstream.fetch_pristine(pristine)
    checkout = tmp_path / "mine"
    shutil.copytree(pristine / "stable_diffusion", checkout / "stable_diffusion")
    with open(checkout / "stable_diffusion" / "stable_diffusion" / "vae.py", "a") as f:
        f.write("# my change\n")
    env = {
        **os.environ,
        "PULSE_UPSTREAM_CHECKOUT": str(checkout),
        "PULSE_CACHE": str(tmp_path / "cache"),
    }
    env.pop(upstream.ALLOW_MODIFIED_ENV, None)
    result = subprocess.run(
        [sys.executable, "-m", "pulse_plugin.cli", "blocks"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "vae.py" in result.stderr and "Traceback" not in result.stderr
