"""Every code block of README.md and docs/techniques.md runs as written, on the toy model.

The ```python blocks of one document run in order in one namespace (a later
block uses the ``sd`` an earlier one made), in an empty temporary folder, so
they must not rely on the repository root. The ``pulse ...`` lines of the
```bash blocks run as commands there too, except those named in NOT_RUN.
"""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

import pulse_plugin.toy

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/techniques.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
# Shell lines that are not run here, and why.
NOT_RUN = {
    "pulse demo": "2.5 minutes with its LoRA training; tests/test_cli.py runs the demo",
    "pulse studio": "serves the page until stopped; tests/test_studio_browser.py drives it",
}
# Sample files the README's LoRA snippet loads; the branch that trains them ships them.
SAMPLES = ("blue-circles.safetensors", "blend.toml")


def code_blocks(path: Path, language: str) -> List[Tuple[int, str]]:
    """(line number, code) of every fenced block of that language, in order."""
    text = path.read_text(encoding="utf-8")
    return [
        (text[: m.start()].count("\n") + 2, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == language
    ]


def pulse_commands(path: Path) -> List[Tuple[int, str]]:
    """The ``pulse ...`` commands of the bash blocks (one per line or ``&&`` part)."""
    out = []
    for line_no, code in code_blocks(path, "bash"):
        for i, line in enumerate(code.splitlines()):
            line = line.split(" #", 1)[0]
            for part in line.split("&&"):
                if part.strip().startswith("pulse "):
                    out.append((line_no + i, part.strip()))
    return out


def test_the_documents_have_blocks():
    assert len(code_blocks(ROOT / "README.md", "python")) >= 3
    assert len(code_blocks(ROOT / "docs/techniques.md", "python")) >= 6
    assert any(
        c.startswith("pulse generate") for _, c in pulse_commands(ROOT / "README.md")
    )


def test_toy_load_samples_at_the_toy_size_unless_told(tiny_pipe):
    from pulse_plugin.sampling import default_latent_size

    def last(pipe, **kw):
        x = None
        for x in pipe.generate_latents("a red circle", num_steps=1, seed=0, **kw):
            pass
        return x

    pipe = pulse_plugin.toy.load()
    assert default_latent_size(pipe) == (8, 8)  # 32 px images, 4x downsampling
    assert last(pipe).shape == (1, 8, 8, 4)
    assert last(pipe, latent_size=(4, 4)).shape == (1, 4, 4, 4)
    assert default_latent_size(tiny_pipe) == (64, 64)  # upstream's own, untouched


def test_a_missing_example_names_its_path():
    with pytest.raises(FileNotFoundError, match="absent.toml: no such example file"):
        pulse_plugin.toy.example("absent.toml")


def stand_in_samples(folder: Path) -> None:
    """The README's sample LoRA and blend, made here until the repository ships them."""
    import mlx.core as mx

    from pulse_plugin.lora import synth

    pipe = pulse_plugin.toy.load()
    paths = synth.target_paths(pipe.unet)
    tensors = synth.random_tensors(pipe.unet, "unet", paths, rank=2, std=0.2)
    mx.save_safetensors(str(folder / SAMPLES[0]), tensors)
    (folder / SAMPLES[1]).write_text(
        'name = "blue"\nadapters = ["blue-circles.safetensors"]\nweights = [0.7]\n'
    )


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """The examples folder, with stand-in samples where the repository lacks them."""
    real = pulse_plugin.toy.EXAMPLES_DIR
    if all((real / name).is_file() for name in SAMPLES):
        return real
    folder = tmp_path_factory.mktemp("examples")
    for path in real.iterdir():
        shutil.copy(path, folder / path.name)
    stand_in_samples(folder)
    return folder


@pytest.mark.parametrize("doc", DOCS)
def test_python_blocks_run_as_written(doc, examples, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pulse_plugin.toy, "EXAMPLES_DIR", examples)
    namespace = {"__name__": "__doc_snippets__"}
    for line_no, code in code_blocks(ROOT / doc, "python"):
        where = f"{doc}:{line_no}"
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as err:
            pytest.fail(f"the block at {where} fails: {type(err).__name__}: {err}")


def pulse_lines():
    return [
        pytest.param(doc, line_no, command, id=f"{doc}:{line_no}")
        for doc in DOCS
        for line_no, command in pulse_commands(ROOT / doc)
    ]


@pytest.mark.parametrize("doc, line_no, command", pulse_lines())
def test_pulse_commands_run_as_written(doc, line_no, command, examples, tmp_path):
    if command in NOT_RUN:
        pytest.skip(NOT_RUN[command])
    shutil.copytree(examples, tmp_path / "examples")  # as in a checkout
    pulse = shutil.which("pulse", path=str(Path(sys.executable).parent))
    argv = [pulse or "pulse", *shlex.split(command)[1:]]
    run = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{doc}:{line_no}: {command}\n{run.stdout}{run.stderr}"
