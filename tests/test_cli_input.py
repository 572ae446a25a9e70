"""Bad input to ``pulse generate``: exit 2 and one message naming the file and field.

Every case of the "CLI, recipes and the Python API" list of issue 12 (and the
sizes and prompts of issue 16) on a small random model folder: no traceback,
nothing written.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile

import mlx.core as mx
import pytest
from test_cli import PROMPT, model_dir, run  # noqa: F401 - model_dir is a fixture

from pulse_plugin import cli
from pulse_plugin.toy import folder, train

EMOJI = "a red \N{GRINNING FACE} circle"
LONG = "red " * 100


def fails(capsys, *argv, tmp_path=None):
    """Run pulse; assert exit 2, no output file; return stderr."""
    out = tmp_path / "out.png" if tmp_path is not None else None
    extra = ["-o", out] if out is not None else []
    assert run(*argv, *extra) == 2
    err = capsys.readouterr().err
    line = err.split("\r")[-1]  # after any progress bar
    assert line.startswith("pulse: error: ") and line.count("\n") == 1, err
    assert "Traceback" not in err
    if out is not None:
        assert not out.exists()
    return err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "-1"], "--seed: expected an integer in [0, 18446744073709551615]"),
        (["--seed", str(2**64)], "--seed: expected an integer in [0, "),
        (["--steps", "0"], "--steps: expected an integer in [1, 1000], got 0"),
        (["--cfg", "inf"], "--cfg: expected a finite number in [0, 100], got inf"),
        (["--cfg", "nan"], "--cfg: expected a finite number in [0, 100], got nan"),
        (["--scale", "0"], "--scale: expected an integer in [1, 64], got 0"),
        (["--scale", "-3"], "--scale: expected an integer in [1, 64], got -3"),
        (["--size", "0"], "--size: expected an integer >= 1, got 0"),
        (["--size", "30"], "--size 30: this model takes sizes that are multiples of 4"),
        (["--size", "2"], "--size 2: this model takes sizes that are multiples of 4"),
        (["--size", "100000"], "needs about"),
        (["--size", "4096"], "needs about"),
        (
            ["--inject", "block=all,prompt=blue,weight=NaN"],
            "--inject: inject[0].weight",
        ),
        (["--inject", "block=all,prompt=blue,weight=1e309"], "finite number >= 0"),
        (
            ["--inject", "block=all,prompt=blue,steps=3"],
            "inject[0].steps: expected a pair",
        ),
        (["--region", "prompt=blue,mask=left,weight=Infinity"], "region[0].weight"),
        (["--reweight", "phrase=red,scale=NaN"], "--reweight: reweight[0].scale"),
        (["--self-attention", "query_region=left,key_region=right,scale=-1"], "scale"),
        (
            ["--lora", "style.safetensors:nan"],
            "--lora style.safetensors:nan: lora[0].weight",
        ),
        (
            ["--lora", "style.safetensors:inf"],
            "lora[0].weight: expected a finite number",
        ),
        (["--lora", "style.safetensors:x"], "expected PATH or PATH:WEIGHT"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(model_dir, tmp_path, capsys, flags, message):
    err = fails(
        capsys, "generate", PROMPT, "--model", model_dir, *flags, tmp_path=tmp_path
    )
    assert message in err


def test_sizes_are_refused_naming_the_multiple_and_the_memory(
    model_dir, tmp_path, capsys
):
    err = fails(
        capsys,
        "generate",
        PROMPT,
        "--model",
        model_dir,
        "--size",
        30,
        tmp_path=tmp_path,
    )
    assert "multiples of 4 (at least 4); try 28 or 32" in err
    err = fails(
        capsys, "generate", PROMPT, "--model", model_dir, "--size", 2, tmp_path=tmp_path
    )
    assert "multiples of 4 (at least 4); try 4" in err
    err = fails(
        capsys,
        "generate",
        PROMPT,
        "--model",
        model_dir,
        "--size",
        4096,
        tmp_path=tmp_path,
    )
    assert "GiB of memory" in err and "available" in err and "(2048, 2048)" in err


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "r.toml",
            '[generate]\nsteps = "4"\n',
            "r.toml: generate.steps: expected an integer",
        ),
        (
            "r.toml",
            '[generate]\nseed = "abc"\n',
            "r.toml: generate.seed: expected an integer",
        ),
        (
            "r.toml",
            "[generate]\nsteps = 2.5\n",
            "r.toml: generate.steps: expected an integer in [1, 1000], got 2.5",
        ),
        (
            "r.toml",
            "[generate]\ncfg = nan\n",
            "r.toml: generate.cfg: expected a finite number",
        ),
        (
            "r.toml",
            '[generate]\nmodel = "x"\n',
            "r.toml: generate.model: not a recipe field; give it as --model",
        ),
        (
            "r.toml",
            '[generate]\nprompt = "x"\n',
            "r.toml: generate.prompt: not a recipe field",
        ),
        (
            "r.toml",
            "[generate]\nsize = 30\n",
            "r.toml: generate.size 30: this model takes sizes that are multiples of 4",
        ),
        (
            "r.toml",
            '[[inject]]\nblock = "all"\nprompt = "blue"\nsteps = 3\n',
            "r.toml: inject[0].steps: expected a pair",
        ),
        (
            "r.toml",
            '[[inject]]\nblock = "all"\nprompt = "blue"\nweight = inf\n',
            "r.toml: inject[0].weight: expected a finite number >= 0, got inf",
        ),
        (
            "r.toml",
            '[[region]]\nprompt = "blue"\nmask = "left"\nweight = nan\n',
            "r.toml: region[0].weight",
        ),
        (
            "r.toml",
            '[[keep_only]]\nphrases = ["red"]\nkeep_bos = "no"\n',
            "r.toml: keep_only[0].keep_bos: expected true or false",
        ),
        (
            "r.toml",
            '[[inject]]\nprompt = "blue"\n',
            "r.toml: inject[0]: missing field 'block'",
        ),
        (
            "r.toml",
            '[[lora]]\npath = "a.safetensors"\nweight = nan\n',
            "r.toml: lora[0].weight",
        ),
        (
            "r.toml",
            '[[lora]]\npath = "a.safetensors"\nscale = 1\n',
            "r.toml: lora[0]: unknown field 'scale'",
        ),
        ("r.toml", '[[capture]]\ndir = "g"\nblocks = 3\n', "r.toml: capture[0].blocks"),
        (
            "r.toml",
            '[[bend]]\ntoken = "circle"\nmode = "flip"\nstrength = nan\n',
            "r.toml: bend[0].strength",
        ),
        (
            "r.json",
            '{"inject": [{"block": "all", "prompt": "blue", "weight": NaN}]}',
            "r.json: inject[0].weight",
        ),
        (
            "r.json",
            '{"region": [{"prompt": "b", "mask": [[0, 2]]}]}',
            "r.json: region[0].mask",
        ),
        ("r.toml", "[[inject]\n", "r.toml: not valid TOML"),
    ],
)
def test_bad_recipes_exit_2_naming_file_and_field(
    model_dir, tmp_path, capsys, name, text, message
):
    recipe = tmp_path / name
    recipe.write_text(text)
    err = fails(
        capsys,
        "generate",
        PROMPT,
        "--model",
        model_dir,
        "--recipe",
        recipe,
        tmp_path=tmp_path,
    )
    assert f"{tmp_path}/{message}" in err


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "b.toml",
            'record = "no"\n',
            "b.toml: record: expected true or false, got 'no'",
        ),
        (
            "b.yaml",
            "configs: [\n  {token: k",
            "b.yaml: not valid YAML (or not plain data) at line 2",
        ),
        (
            "b.yaml",
            "!!python/object/apply:os.system ['touch PWNED']\n",
            "could not determine a constructor",
        ),
        (
            "b.json",
            '{"configs": [{"token": "circle", "mode": "flip", "dx": NaN}]}',
            "b.json: configs[0].dx",
        ),
    ],
)
def test_bad_bend_files_exit_2_naming_file_and_field(
    model_dir, tmp_path, capsys, monkeypatch, name, text, message
):
    pytest.importorskip("yaml")
    bend = tmp_path / name
    bend.write_text(text)
    monkeypatch.chdir(tmp_path)
    err = fails(
        capsys,
        "generate",
        "a red (circle)",
        "--model",
        model_dir,
        "--bend",
        bend,
        tmp_path=tmp_path,
    )
    assert message in err and "--bend: bend[0]" in err
    assert not (tmp_path / "PWNED").exists()


def test_a_bend_folder_is_refused(model_dir, tmp_path, capsys):
    err = fails(
        capsys,
        "generate",
        "a red (circle)",
        "--model",
        model_dir,
        "--bend",
        tmp_path,
        tmp_path=tmp_path,
    )
    assert f"{tmp_path}: expected a settings file, got a folder" in err


@pytest.mark.parametrize(
    "prompt, flag, message",
    [
        (EMOJI, [], "prompt: the tokenizer has no token for ['\N{GRINNING FACE}']"),
        (
            LONG,
            [],
            "prompt: 102 tokens (start and end marks included), more than the text encoder's limit of 77",
        ),
        (PROMPT, ["--negative", EMOJI], "negative: the tokenizer has no token"),
        (
            PROMPT,
            ["--inject", f"block=all,prompt={LONG}"],
            "inject[0]: prompt: 102 tokens",
        ),
        (
            EMOJI,
            ["--reweight", "phrase=red,scale=2"],
            "prompt: the tokenizer has no token",
        ),
    ],
)
def test_prompts_the_text_encoder_cannot_take_are_refused(
    model_dir, tmp_path, capsys, prompt, flag, message
):
    err = fails(
        capsys, "generate", prompt, "--model", model_dir, *flag, tmp_path=tmp_path
    )
    assert message in err


def test_outputs_are_checked_before_generating(
    model_dir, tmp_path, capsys, monkeypatch
):
    args = ["generate", PROMPT, "--model", model_dir, "--steps", 1]
    (tmp_path / "file").write_text("")
    err = fails(capsys, *args, "-o", tmp_path / "file" / "x.png")
    assert "file/x.png: " in err and "is a file, not a folder" in err
    assert "expected a .png file name" in fails(capsys, *args, "-o", tmp_path / "out")
    (tmp_path / "dir.png").mkdir()
    assert "is a folder" in fails(capsys, *args, "-o", tmp_path / "dir.png")
    assert "is a file, not a folder" in fails(
        capsys, *args, "--capture", tmp_path / "file", "-o", tmp_path / "c.png"
    )

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(
        tempfile, "mkstemp", denied
    )  # an unwritable folder, as root too
    err = fails(capsys, *args, "-o", tmp_path / "new" / "x.png")
    assert f"cannot write in {tmp_path} (Permission denied)" in err
    monkeypatch.undo()
    assert set(tmp_path.iterdir()) == {tmp_path / "file", tmp_path / "dir.png"}


def test_capture_into_an_unwritable_folder(model_dir, tmp_path, capsys, monkeypatch):
    real = tempfile.mkstemp

    def denied(*a, dir=None, **k):
        if str(dir).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    err = fails(
        capsys,
        "generate",
        PROMPT,
        "--model",
        model_dir,
        "--capture",
        tmp_path / "ro" / "g",
        tmp_path=tmp_path,
    )
    assert (
        f"capture dir {tmp_path}/ro/g: cannot write in {tmp_path}/ro (Permission denied)"
        in err
    )


def test_the_png_is_written_whole_or_not_at_all(model_dir, tmp_path, monkeypatch):
    from PIL import Image

    def full_disk(self, fp, *a, **k):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out.png"
    assert run("generate", PROMPT, "--model", model_dir, "--steps", 1, "-o", out) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, sd):
    """A small model folder whose UNet holds one NaN weight."""
    cfg = train.ToyConfig(
        unet_channels=(32, 32), vae_channels=(8, 8), text_dims=32, heads=2
    )
    pipe, configs = train.build(sd, cfg)
    w = pipe.unet.conv_in.weight
    pipe.unet.conv_in.weight = mx.where(
        mx.arange(w.size).reshape(w.shape) == 0, float("nan"), w
    )
    out = tmp_path_factory.mktemp("nan") / "model"
    folder.save_pipeline(
        pipe, out, configs.unet, configs.text, configs.vae, sample_size=16
    )
    return out


def test_nan_in_the_model_is_an_error_not_a_black_image(nan_model, tmp_path, capsys):
    err = fails(
        capsys,
        "generate",
        PROMPT,
        "--model",
        nan_model,
        "--steps",
        2,
        tmp_path=tmp_path,
    )
    assert (
        "non-finite (NaN or inf) at step 0 of 2" in err
        and "no technique or LoRA" in err
    )


def test_an_overflowing_technique_is_named_with_its_step(model_dir, tmp_path, capsys):
    inject = "block=all,prompt=a blue square,weight=3e38,steps=[1,null]"
    err = fails(
        capsys,
        "generate",
        PROMPT,
        "--model",
        model_dir,
        "--steps",
        3,
        "--inject",
        inject,
        tmp_path=tmp_path,
    )
    assert "at step 1 of 3" in err and "Injection on [" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed: expected an integer"),
        (["--size", "30"], "multiples of 4"),
        (["--cfg", "nan"], "--cfg: expected a finite number"),
    ],
)
def test_the_pulse_command_exits_2_without_a_traceback(
    model_dir, tmp_path, argv, message
):
    """Through the installed entry point, in its own process."""
    pulse = shutil.which("pulse", path=os.path.dirname(sys.executable))
    assert pulse is not None
    done = subprocess.run(
        [
            pulse,
            "generate",
            EMOJI.replace("\N{GRINNING FACE} ", ""),
            "--model",
            str(model_dir),
            *argv,
            "-o",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr and not (tmp_path / "o.png").exists()


def test_recipe_settings_are_used_and_flags_override_them(model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"generate": {"steps": 1, "size": 24, "seed": 3}}))
    assert (
        run(
            "generate",
            PROMPT,
            "--model",
            model_dir,
            "--recipe",
            recipe,
            "-o",
            tmp_path / "a.png",
        )
        == 0
    )
    from PIL import Image

    assert Image.open(tmp_path / "a.png").size == (24, 24)
    assert (
        run(
            "generate",
            PROMPT,
            "--model",
            model_dir,
            "--recipe",
            recipe,
            "--size",
            16,
            "-o",
            tmp_path / "b.png",
        )
        == 0
    )
    assert Image.open(tmp_path / "b.png").size == (16, 16)
    assert (
        cli.main(
            [
                "generate",
                PROMPT,
                "--model",
                str(model_dir),
                "--recipe",
                str(recipe),
                "--size",
                "22",
                "-o",
                str(tmp_path / "c.png"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "--steps: expected an integer in [1, 1000]"),
        (["--seed", "-1"], "--seed: expected an integer"),
        (["--lora-steps", "-1"], "--lora-steps: expected an integer >= 0"),
    ],
)
def test_bad_demo_flags_exit_2(model_dir, tmp_path, capsys, flags, message):
    err = fails(capsys, "demo", "--model", model_dir, "--out", tmp_path / "d", *flags)
    assert message in err and not (tmp_path / "d").exists()
