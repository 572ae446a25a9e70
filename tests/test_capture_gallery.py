"""Attention capture: real probabilities, no change to the image, gallery outputs."""

import json

import mlx.core as mx
import numpy as np
from PIL import Image

from pulse_plugin.bending.config import BendConfig
from pulse_plugin.bending.processor import install
from pulse_plugin.capture.gallery import capture_run, noise_percent
from pulse_plugin.capture.recorder import Recorder

PROMPT = "a red cat on a house"
RUN = dict(num_steps=4, cfg_weight=7.5, latent_size=(16, 16), seed=5)


def plain_image(pipe, prompt=PROMPT):
    x = None
    for x in pipe.generate_latents(prompt, **RUN):
        mx.eval(x)
    return np.array(pipe.decode(x)[0], dtype=np.float32)


def test_capture_run_writes_the_gallery_and_keeps_the_image(tiny_pipe, tmp_path):
    base = plain_image(tiny_pipe)
    r = capture_run(tiny_pipe, PROMPT, tmp_path, **RUN)
    assert np.array_equal(r.image, base)  # recording does not change the image
    assert not tiny_pipe.unet.hooks.enabled and not tiny_pipe.unet.hooks.processors
    names = set(r.files)
    assert {"image.png", "grid.png", "evolution.gif", "metadata.json"} <= names
    assert len([n for n in names if n.startswith("token_")]) == len(PROMPT.split())
    gif = Image.open(r.folder / "evolution.gif")
    assert gif.n_frames == RUN["num_steps"]
    meta = json.loads((r.folder / "metadata.json").read_text())
    assert meta["prompt"] == PROMPT and meta["seed"] == RUN["seed"]
    assert meta["tokens"] == tiny_pipe.tokenizer.tokenize(PROMPT)
    assert [s["noise_percent"] for s in meta["steps"]] == [100, 75, 50, 25]
    assert [s["step_idx"] for s in meta["steps"]] == [0, 1, 2, 3]
    assert meta["blocks"] == tiny_pipe.unet.hooks.sites
    assert meta["check"]["max_row_sum_error"] < 1e-5
    nk = len(meta["tokens"])
    assert r.recorder.nbytes == RUN["num_steps"] * nk * 16 * 16 * 4
    assert meta["memory"]["maps_bytes"] == r.recorder.nbytes
    capture_run(tiny_pipe, PROMPT, tmp_path, **RUN)
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index) == 2 and (tmp_path / "index.html").exists()


def test_recorded_maps_are_the_real_probabilities(tiny_pipe):
    raw = []

    def spy(call, next):
        def keep(probs, c):
            raw.append(np.array(probs[c.meta.cond_rows].mean(axis=(0, 1))))

        return next(call.with_(observers=call.observers + (keep,)))

    rec = Recorder(tiny_pipe, size=(8, 8), blocks="mid.0.0")
    with install(tiny_pipe, {("mid.0.0", "cross"): spy}, "spy"), rec:
        for x in tiny_pipe.generate_latents(PROMPT, **RUN):
            mx.eval(x, *rec.arrays())
    assert len(rec.steps) == len(raw) == RUN["num_steps"]
    for step, probs in zip(rec.steps, raw):  # probs: (H*W, Nk)
        expected = probs.T.reshape(-1, 8, 8)
        np.testing.assert_allclose(step.maps, expected, rtol=1e-6, atol=1e-7)
        assert step.calls == 1
    assert rec.check_probabilities() < 1e-5


def test_capture_sees_applied_bends_and_visualised_bends_keep_the_image(
    tiny_pipe, tmp_path
):
    base = capture_run(tiny_pipe, "a red (cat) on a house", tmp_path, **RUN)
    bend = BendConfig("cat", "regional_mask", region=(0, 0, 0.5, 1))
    seen = capture_run(
        tiny_pipe, "a red (cat) on a house", tmp_path, bends=[bend], **RUN
    )
    assert np.array_equal(seen.image, base.image)  # visualise phase
    bend_apply = [BendConfig("cat", "regional_mask", region=(0, 0, 0.5, 1))]
    from pulse_plugin.bending.config import BendingSettings

    applied = capture_run(
        tiny_pipe,
        "a red (cat) on a house",
        tmp_path,
        bends=BendingSettings(bend_apply, apply_to_output=True),
        **RUN,
    )
    cat = applied.words[2].positions[0]
    right = applied.recorder.steps[0].maps[cat][:, 10:]
    assert right.max() < base.recorder.steps[0].maps[cat][:, 10:].max()
    assert not np.array_equal(applied.image, base.image)


def test_noise_percent():
    assert noise_percent(999.0, 999.0) == 100 and noise_percent(None, 1.0) is None
    assert noise_percent(249.75, 999.0) == 25


def test_cli_capture_records_a_visualise_only_bend_as_pictures(tmp_path, capsys):
    """--bend --capture on the toy model: the printed index exists, the bend is in the
    metadata, and the bent maps are drawn beside the originals."""
    import re

    from pulse_plugin import cli

    bend = tmp_path / "bend.json"
    keep_left = {"token": "circle", "mode": "regional_mask", "region": [0, 0, 0.5, 1]}
    bend.write_text(json.dumps({"configs": [keep_left]}))  # visualise only
    argv = ["generate", "a red circle on the right", "--steps", "3"]
    assert cli.main(argv + ["-o", str(tmp_path / "plain.png")]) == 0
    capsys.readouterr()
    argv[1] = "a red (circle) on the right"
    argv += ["--bend", str(bend), "--capture", str(tmp_path / "g")]
    assert cli.main(argv + ["-o", str(tmp_path / "bent.png")]) == 0
    printed = re.search(r"capture: (\S+)", capsys.readouterr().out).group(1)
    assert printed == str(tmp_path / "g" / "index.html")
    page = (tmp_path / "g" / "index.html").read_text()
    (run,) = [p for p in (tmp_path / "g").iterdir() if p.is_dir()]
    meta = json.loads((run / "metadata.json").read_text())
    bending = meta["bending"]
    assert bending["phase"] == "visualise only" and bending["records"] > 0
    assert [(b["token"], b["mode"]) for b in bending["bends"]] == [
        ("circle", "regional_mask")
    ]
    assert bending["pictures"] == ["bend_00_circle-regional-mask.png"]
    assert f"{run.name}/bend_00_circle-regional-mask.png" in page
    assert f"{run.name}/evolution.gif" in page
    plain = np.array(Image.open(tmp_path / "plain.png"))
    assert np.array_equal(np.array(Image.open(tmp_path / "bent.png")), plain)
    # original | bent over the same image, one colour scale: the bent map is empty
    # on the right half, so that half of the bent tile is darker than the original's
    pic = np.array(Image.open(run / bending["pictures"][0]), np.float32)
    w = pic.shape[1] // 2
    body = pic[14:-14]
    orig_right, bent_right = body[:, w // 2 : w], body[:, w + w // 2 :]
    assert bent_right.mean() < orig_right.mean() - 10, (
        bent_right.mean(),
        orig_right.mean(),
    )
