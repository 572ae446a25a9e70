"""LoRA training on a tiny random model: dataset checks, loss goes down, exact resume, round trip."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from pulse_plugin import lora as L
from pulse_plugin import tiny
from pulse_plugin.lora import train as T

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_dataset(folder, size=16, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % 3]
        a = np.zeros((size, size, 3), np.uint8)
        a[:] = COLOURS[colour]
        a[: size // 2, : size // 2] = 255 - np.array(COLOURS[colour])
        Image.fromarray(a).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a {colour} square painting")
    return folder


def config(tmp_path, **kw):
    base = dict(
        output=str(tmp_path / "out.safetensors"),
        rank=4,
        learning_rate=3e-3,  # 1e-2 overshoots: eval loss down 0.88x to 0.92x by BLAS
        steps=30,
        batch_size=4,
        resolution=16,
        seed=0,
        targets=("attn", "ff"),
        progress=False,
        base_model="tiny-random",
    )
    base.update(kw)
    return T.TrainConfig(**base)


def test_training_lowers_loss_and_round_trips(plain_sd, tmp_path):
    pipe = tiny.build_pipeline(plain_sd)
    data = make_dataset(tmp_path / "data")
    cfg = config(tmp_path)
    before = T.dataset_loss(pipe, data, cfg)
    result = T.train(pipe, data, cfg)
    assert L.active(pipe) == {}  # training adapters removed afterwards
    assert T.dataset_loss(pipe, data, cfg) == before  # pipe itself unchanged
    lo = L.load_lora(result.path)
    assert lo.metadata["ss_network_dim"] == "4"
    assert lo.metadata["ss_steps"] == "30"
    assert lo.metadata["ss_num_train_images"] == "6"
    assert lo.metadata["ss_base_model"] == "tiny-random"
    n_attn = sum(1 for c, p in lo.layers if p.endswith(("query_proj", "out_proj")))
    assert n_attn > 0 and any(p.endswith("linear2") for _, p in lo.layers)
    L.apply(pipe, lo)
    after = T.dataset_loss(pipe, data, cfg)
    L.remove(pipe)
    # after / before, seeds 0-3 (tools/measure_lora.py --only tiny-train):
    # 0.646 0.639 0.627 0.620 under OpenBLAS Haswell, Nehalem, Prescott,
    # SkylakeX and MLX's bundled BLAS alike (at lr 1e-2: 0.88 to 0.92)
    assert after < 0.8 * before, (before, after)
    assert np.isfinite(result.losses).all() and len(result.losses) == 30


def test_resume_is_exact(plain_sd, tmp_path):
    data = make_dataset(tmp_path / "data", n=3)
    full = T.train(
        tiny.build_pipeline(plain_sd),
        data,
        config(
            tmp_path / "a", steps=4, batch_size=2, checkpoint_every=2, targets=("attn",)
        ),
    )
    pipe = tiny.build_pipeline(plain_sd)
    cfg_b = config(
        tmp_path / "b", steps=2, batch_size=2, checkpoint_every=2, targets=("attn",)
    )
    T.train(pipe, data, cfg_b)
    cfg_b.steps, cfg_b.resume = 4, "latest"
    resumed = T.train(pipe, data, cfg_b)
    assert resumed.start_step == 2
    assert resumed.losses == full.losses
    a, b = mx.load(str(full.path)), mx.load(str(resumed.path))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.array(a[k]), np.array(b[k])), k
    ckpt = L.load_lora(
        tmp_path / "a" / "out_checkpoints" / "step_000004.lora.safetensors"
    )
    assert set(ckpt.layers) == set(L.load_lora(full.path).layers)
    cfg_b.rank = 8
    with pytest.raises(L.LoRAError, match="rank"):
        T.train(pipe, data, cfg_b)
    assert L.active(pipe) == {}


def test_sdxl_training_runs(plain_sd, tmp_path):
    pipe = tiny.build_pipeline(plain_sd, tiny.TinyConfig(sdxl=True))
    data = make_dataset(tmp_path / "data", n=2)
    res = T.train(
        pipe, data, config(tmp_path, steps=2, batch_size=2, targets=("attn",))
    )
    lo = L.load_lora(res.path)
    assert all(c == "unet" for c, _ in lo.layers)


def test_dataset_checks(tmp_path):
    d = make_dataset(tmp_path / "d", n=2)
    assert [e.caption for e in T.scan_dataset(d, 16)] == [
        "a red square painting",
        "a green square painting",
    ]
    (d / "img1.txt").unlink()
    with pytest.raises(T.DatasetError, match=r"img1.png: no caption file img1.txt"):
        T.scan_dataset(d, 16)
    (d / "img1.txt").write_text("  ")
    with pytest.raises(T.DatasetError, match="empty caption"):
        T.scan_dataset(d, 16)
    (d / "img1.txt").write_text("ok")
    (d / "img0.png").write_bytes(b"not an image")
    with pytest.raises(T.DatasetError, match="img0.png: unreadable image"):
        T.scan_dataset(d, 16)
    (d / "img0.png").unlink()
    (d / "img0.txt").unlink()
    with pytest.raises(
        T.DatasetError, match="16x16 is smaller than the training resolution 32"
    ):
        T.scan_dataset(d, 32)
    assert len(T.scan_dataset(d, 32, allow_upscale=True)) == 1
    with pytest.raises(T.DatasetError, match="not found"):
        T.scan_dataset(tmp_path / "nope", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(T.DatasetError, match="no images"):
        T.scan_dataset(tmp_path / "empty", 16)
    (d / "metadata.jsonl").write_text(
        json.dumps({"file_name": "img1.png", "text": "from metadata"}) + "\n{bad\n"
    )
    with pytest.raises(T.DatasetError, match=r"metadata.jsonl:2"):
        T.scan_dataset(d, 16)
    (d / "metadata.jsonl").write_text(
        json.dumps({"file_name": "img1.png", "text": "meta"})
    )
    assert [e.caption for e in T.scan_dataset(d, 16)] == ["meta"]
    with pytest.raises(L.LoRAError, match="resolution"):
        T.TrainConfig(resolution=20)


def test_cli_check_only(tmp_path, capsys):
    d = make_dataset(tmp_path / "d", n=2)
    assert T.main([str(d), "--resolution", "16", "--check-only"]) == 0
    assert "2 image(s)" in capsys.readouterr().out
