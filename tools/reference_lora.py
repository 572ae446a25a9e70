"""Write the LoRA reference fixtures with diffusers, transformers and peft themselves.

Run by ``tools/make_reference_fixtures.py`` (``make(out)`` writes ``out/lora``), or
alone with a Python that has torch, diffusers, transformers, peft, lycoris-lora and
safetensors (CI never runs this; the fixtures are committed):

    /work/refenv/bin/python tools/reference_lora.py [--out tests/fixtures/reference]

The bases are the model fixtures next to ``lora/`` (written first by
tools/make_reference_fixtures.py): the SD 1.5-shaped single file with its config
folder, read by diffusers' ``from_single_file``, and the SDXL-shaped folder, both
float16 and upcast to float32 for every computation. LoRA weights are made by PEFT
(``LoraConfig`` with random A and B) and written by the libraries' own savers
(diffusers ``save_lora_weights`` with and without ``lora_adapter_metadata``, PEFT
``save_pretrained``); kohya files carry the same weights under the key names kohya's
scripts write (SD 1.x: diffusers module names; SDXL: the SGM UNet's names) and are
checked by loading them with diffusers' own loader, which converts those names
itself. LoHa and LoKr files are written by lycoris-lora. Each ``*.npz`` holds what
the library computes from the file: the fused weights (diffusers ``fuse_lora``, PEFT's
merge, LyCORIS's module update) of the changed layers.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "reference"
SEED = 20261201
B_STD = 0.05  # PEFT's random B (init_lora_weights=False) scaled to a modest update

# Each case targets a few layers of every kind that matters (PEFT target_modules as a
# full-match pattern), so the fused weights stay small: attention, the GEGLU
# ff.net.0.proj that upstream splits in two, 1x1 (proj_in, conv_shortcut) and 3x3 convs.
_T = "down_blocks.0.attentions.0.transformer_blocks.0."
SD_UNET = [
    _T + "attn1.to_q",
    _T + "attn1.to_k",
    _T + "attn2.to_v",
    _T + "ff.net.0.proj",
    _T + "ff.net.2",
    "down_blocks.0.attentions.0.proj_in",
    "up_blocks.0.resnets.0.conv_shortcut",
]
# transformers 5 names CLIPTextModel's modules without the text_model. prefix
SD_TE = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.0.mlp.fc1"]
SD_PLAIN = (
    SD_UNET[:2] + SD_UNET[5:6]
)  # the no-metadata file: a subset of the same tensors
SD_KOHYA = SD_UNET[:2] + SD_UNET[5:] + ["mid_block.resnets.0.conv2"]  # a 3x3 LoCon
SD_PEFT = SD_UNET[:3] + SD_UNET[5:6]
# LyCORIS LoHa / LoKr (kohya names, lycoris-lora's own writer): linear, 1x1 and 3x3 convs
SD_LYCORIS = [SD_UNET[0], SD_UNET[2], SD_UNET[3], SD_UNET[5], SD_UNET[6]] + [
    "mid_block.resnets.0.conv2"
]
LYCORIS_ALGOS = {
    "loha": dict(linear_dim=4, linear_alpha=2.0),
    "lokr": dict(linear_dim=2, linear_alpha=1.0, factor=4),
}
# SDXL-shaped (two levels, one ResBlock per level): one layer of each SGM name kind
SDXL_UNET = [
    "conv_in",
    "time_embedding.linear_1",
    "add_embedding.linear_1",
    "down_blocks.0.resnets.0.conv1",  # input_blocks.1.0.in_layers.2
    "down_blocks.0.downsamplers.0.conv",  # input_blocks.2.0.op
    "down_blocks.1.resnets.0.time_emb_proj",  # input_blocks.3.0.emb_layers.1
    "down_blocks.1.attentions.0.proj_in",  # input_blocks.3.1.proj_in
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "mid_block.resnets.0.time_emb_proj",  # middle_block.0
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",  # middle_block.1
    "mid_block.resnets.1.time_emb_proj",  # middle_block.2
    "up_blocks.0.resnets.0.conv_shortcut",  # output_blocks.0.0.skip_connection
    "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0",  # output_blocks.1.1
    "up_blocks.0.upsamplers.0.conv",  # output_blocks.1.2.conv
    "up_blocks.1.resnets.1.conv_shortcut",  # output_blocks.3.0.skip_connection
    "conv_out",
]
# diffusers 0.42 cannot load a kohya text-encoder LoRA of self-attention layers only
# ("Could not automatically infer state dict type"): the SDXL file has MLP layers there
SDXL_TE = ["encoder.layers.0.mlp.fc1"]
SDXL_TE2 = ["text_model.encoder.layers.0.mlp.fc2"]  # WithProjection keeps the prefix
# Per-module overrides exercise PEFT's rank_pattern / alpha_pattern.
RANK_PATTERN = {"ff.net.2": 2}
ALPHA_PATTERN = {"to_k": 2.0, "conv_shortcut": 6.0}
# kohya files: one alpha for linear layers and one for convs (kohya's network_alpha and
# conv_alpha). diffusers 0.42 gives kohya attention layers (to_q/to_k/to_v/to_out) the
# most common alpha of the file rather than their own, so these files keep them equal.
KOHYA_ALPHA_PATTERN = {"conv1": 6.0, "conv2": 6.0, "conv_shortcut": 6.0, "conv": 6.0}


def pattern(modules) -> str:
    """A PEFT target_modules pattern that selects exactly ``modules``."""
    return "|".join(re.escape(m) for m in modules)


# ---------------------------------------------------------------- bases


def allow_peft_021() -> None:
    """transformers 5.24 asks for peft >= 0.22, which PyPI does not have: skip that check.

    (peft 0.21 loads, saves and merges these CLIP adapters; the check is a version
    floor only, and the script verifies its results against diffusers' and PEFT's.)
    """
    import transformers.integrations.peft as tp

    tp.check_peft_version = lambda min_version=None: None


# The bases are the model fixtures (tools/make_reference_fixtures.py writes them first):
# the SD 1.5-shaped single file with its config folder, and the SDXL-shaped folder.
SD_BASE = ("sd15_single_file.safetensors", "sd15")
SDXL_BASE = "sdxl"


def load_pipe(kind: str, ref: Path):
    """The model fixture as a diffusers pipeline, upcast to float32 (its files hold float16)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if kind == "sdxl":
        return StableDiffusionXLPipeline.from_pretrained(
            ref / SDXL_BASE, torch_dtype=torch.float32
        )
    file, config = SD_BASE
    return StableDiffusionPipeline.from_single_file(
        str(ref / file),
        config=str(ref / config),
        torch_dtype=torch.float32,
        local_files_only=True,
    )


def parts(pipe) -> Dict[str, torch.nn.Module]:
    """The pipeline's models that LoRA files change."""
    names = ("unet", "text_encoder", "text_encoder_2")
    return {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}


def load_base(kind: str, ref: Path) -> Dict[str, torch.nn.Module]:
    return {n: m.eval() for n, m in parts(load_pipe(kind, ref)).items()}


# ---------------------------------------------------------------- LoRA weights by PEFT


def lora_config(targets, rank_pattern=None, alpha_pattern=None, **extra):
    from peft import LoraConfig

    return LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        rank_pattern=rank_pattern or {},
        alpha_pattern=alpha_pattern or {},
        init_lora_weights=False,
        **extra,
    )


def randomise_b(model) -> None:
    """PEFT's random init makes B like A; scale it down to a modest update.

    A and B are then rounded to float16, the dtype the files hold, so every library
    computes in float32 from exactly the values in the files.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(B_STD / max(float(p.std()), 1e-12))
            if "lora_" in name:
                p.copy_(p.half().float())


def half(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A LoRA state dict as the float16 tensors a file holds (values already float16)."""
    return {k: v.half() for k, v in state.items()}


def peft_lora(model, config) -> Dict[str, torch.Tensor]:
    """Add a PEFT LoRA to ``model`` in place; returns its diffusers-style state dict."""
    from peft.utils import get_peft_model_state_dict

    model.add_adapter(config)
    randomise_b(model)
    return get_peft_model_state_dict(model)


def config_dict(config) -> dict:
    data = config.to_dict()
    return json.loads(
        json.dumps(data, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    )


# ---------------------------------------------------------------- kohya naming

KOHYA_TE = {"text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
KOHYA_TE_XL = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def sgm_name(module: str, layers_per_block: int) -> str:
    """The SGM (original SDXL UNet) module name of a diffusers UNet module name."""
    resnet = {
        "conv1": "in_layers.2",
        "conv2": "out_layers.3",
        "time_emb_proj": "emb_layers.1",
        "conv_shortcut": "skip_connection",
    }
    fixed = {
        "conv_in": "input_blocks.0.0",
        "conv_out": "out.2",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    if module in fixed:
        return fixed[module]
    p = module.split(".")
    per = layers_per_block + 1
    if p[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{p[1]}.{p[2]}"]
        rest = resnet[p[3]] if p[1] == "resnets" else ".".join(p[3:])
        return f"middle_block.{index}.{rest}"
    level = int(p[1])
    if p[0] == "down_blocks":
        if p[2] == "downsamplers":
            return f"input_blocks.{1 + level * per + layers_per_block}.0.op"
        index = 1 + level * per + int(p[3])
        if p[2] == "resnets":
            return f"input_blocks.{index}.0.{resnet[p[4]]}"
        return f"input_blocks.{index}.1.{'.'.join(p[4:])}"
    if p[2] == "upsamplers":
        # the upsampler follows the level's last ResBlock (and its attention, if any)
        return f"output_blocks.{level * per + layers_per_block}.UPSAMPLE.conv"
    index = level * per + int(p[3])
    if p[2] == "resnets":
        return f"output_blocks.{index}.0.{resnet[p[4]]}"
    return f"output_blocks.{index}.1.{'.'.join(p[4:])}"


def kohya_tensors(
    state: Dict[str, torch.Tensor],
    alphas: Dict[str, float],
    sdxl: bool,
    up_has_attention: Dict[int, bool],
    layers_per_block: int,
) -> Dict[str, torch.Tensor]:
    """kohya keys for diffusers-named LoRA tensors (``unet.<module>.lora_A.weight``)."""
    out = {}
    te = KOHYA_TE_XL if sdxl else KOHYA_TE
    for key, value in state.items():
        part, rest = key.split(".", 1)
        module, role = rest.rsplit(".lora_", 1)
        if part == "unet":
            name = sgm_name(module, layers_per_block) if sdxl else module
            if "UPSAMPLE" in name:
                level = int(module.split(".")[1])
                name = name.replace("UPSAMPLE", "2" if up_has_attention[level] else "1")
            prefix = "lora_unet"
        else:  # kohya names CLIP modules as transformers 4 did: text_model.encoder...
            name, prefix = "text_model." + module.removeprefix("text_model."), te[part]
        base = f"{prefix}_{name.replace('.', '_')}"
        suffix = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[role]
        out[f"{base}.{suffix}"] = value.half().contiguous()  # kohya's fp16 saves
        alpha = float(alphas[key.rsplit(".lora_", 1)[0]])
        out[f"{base}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    return out


def module_alphas(config, state: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """PEFT's alpha of every ``<part>.<module>`` in ``state`` (alpha_pattern first)."""
    from peft.utils.other import get_pattern_key

    out = {}
    for key in state:
        full = key.rsplit(".lora_", 1)[0]
        module = full.split(".", 1)[1]
        pattern = get_pattern_key(config.alpha_pattern.keys(), module)
        out[full] = config.alpha_pattern.get(pattern, config.lora_alpha)
    return out


# ---------------------------------------------------------------- references


def weights(models: Dict[str, torch.nn.Module]) -> Dict[str, np.ndarray]:
    out = {}
    for part, model in models.items():
        for k, v in model.state_dict().items():
            out[f"{part}.{k}"] = v.detach().float().numpy().copy()
    return out


def changed(
    before: Dict[str, np.ndarray], after: Dict[str, np.ndarray]
) -> Dict[str, np.ndarray]:
    """The entries of ``after`` that differ from ``before`` (same keys required)."""
    assert before.keys() == after.keys(), sorted(set(before) ^ set(after))[:5]
    return {k: v for k, v in after.items() if not np.array_equal(v, before[k])}


def diffusers_fused(kind: str, ref: Path, lora_file: Path) -> Dict[str, np.ndarray]:
    """diffusers' load_lora_weights + fuse_lora on a fresh load of the base."""
    pipe = load_pipe(kind, ref)
    models = parts(pipe)
    before = weights(models)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return changed(before, weights(models))


def peft_merged(kind: str, ref: Path, part: str, folder: Path) -> Dict[str, np.ndarray]:
    """PEFT's PeftModel.from_pretrained + merge_and_unload on a fresh load of the base."""
    from peft import PeftModel

    models = load_base(kind, ref)
    before = weights(models)
    models[part] = PeftModel.from_pretrained(
        models[part], str(folder)
    ).merge_and_unload()
    return changed(before, weights(models))


def peft_reference(
    kind: str, ref: Path, adapters: Dict[str, Tuple[object, Dict[str, torch.Tensor]]]
) -> Dict[str, np.ndarray]:
    """PEFT's merge of given adapter weights, each under its LoraConfig, on a fresh base."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import set_peft_model_state_dict

    models = load_base(kind, ref)
    before = weights(models)
    for part, (config, state) in adapters.items():
        models[part].add_adapter(config)
        result = set_peft_model_state_dict(models[part], state)
        assert not result.unexpected_keys, result.unexpected_keys[:3]
        for module in models[part].modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
    merged = {
        k.replace(".base_layer", ""): v
        for k, v in weights(models).items()
        if "lora_" not in k
    }
    return changed(before, merged)


def checked_kohya(
    name: str, fused: Dict[str, np.ndarray], reference: Dict[str, np.ndarray], report
) -> Dict[str, np.ndarray]:
    """PEFT's merge, after checking diffusers' fuse of the kohya file against it.

    diffusers 0.42 with transformers 5 drops kohya text-encoder self-attention layers
    (it renames them to_q_lora etc., which no CLIP module has): those layers are
    reported and taken from PEFT alone; every layer diffusers does fuse must agree.
    """
    assert set(fused) <= set(reference), sorted(set(fused) - set(reference))[:5]
    report[f"{name}: diffusers' conversion vs PEFT's merge"] = max_rel(
        fused, {k: reference[k] for k in fused}
    )
    dropped = sorted(set(reference) - set(fused))
    assert all(".self_attn." in k for k in dropped), dropped
    print(f"{name}: layers diffusers' kohya loader drops: {dropped}")
    return reference


def max_rel(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in a)


def save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    np.savez_compressed(path, **{k: v.astype(np.float32) for k, v in arrays.items()})


# ---------------------------------------------------------------- the cases


def subset(state: Dict[str, torch.Tensor], modules) -> Dict[str, torch.Tensor]:
    """The tensors of ``state`` that belong to ``modules``."""
    return {k: v for k, v in state.items() if k.rsplit(".lora_", 1)[0] in modules}


def make_sd(out: Path, ref: Path, tmp: Path, report: Dict[str, float]) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model
    from safetensors.torch import save_file

    models = load_base("sd", ref)
    ucfg = lora_config(pattern(SD_UNET), RANK_PATTERN, ALPHA_PATTERN)
    tcfg = lora_config(pattern(SD_TE), alpha_pattern={"fc1": 2.0})
    unet_sd = peft_lora(models["unet"], ucfg)
    te_sd = peft_lora(models["text_encoder"], tcfg)

    # diffusers with lora_adapter_metadata: scale = lora_alpha / r (and the patterns)
    meta_dir = out / "sd_diffusers_meta"
    StableDiffusionPipeline.save_lora_weights(
        meta_dir,
        unet_lora_layers=half(unet_sd),
        text_encoder_lora_layers=half(te_sd),
        unet_lora_adapter_metadata=config_dict(ucfg),
        text_encoder_lora_adapter_metadata=config_dict(tcfg),
    )
    fused = diffusers_fused("sd", ref, meta_dir / "pytorch_lora_weights.safetensors")
    save_npz(out / "sd_diffusers_meta.npz", fused)
    reference = peft_reference(
        "sd", ref, {"unet": (ucfg, unet_sd), "text_encoder": (tcfg, te_sd)}
    )
    report["sd diffusers+metadata: diffusers vs PEFT's merge"] = max_rel(
        fused, reference
    )

    # a subset of the same tensors without metadata: diffusers takes alpha = r (scale 1)
    plain = tmp / "plain"
    StableDiffusionPipeline.save_lora_weights(
        plain,
        unet_lora_layers=half(subset(unet_sd, SD_PLAIN)),
        text_encoder_lora_layers=half(te_sd),
    )
    plain_file = out / "sd_diffusers_plain.safetensors"
    shutil.copy(plain / "pytorch_lora_weights.safetensors", plain_file)
    save_npz(out / "sd_diffusers_plain.npz", diffusers_fused("sd", ref, plain_file))

    # kohya SD 1.x: diffusers module names with '_', alphas as tensors
    kcfg = lora_config(pattern(SD_KOHYA), RANK_PATTERN, KOHYA_ALPHA_PATTERN)
    kohya_unet = peft_lora(load_base("sd", ref)["unet"], kcfg)
    prefixed = {f"unet.{k}": v for k, v in kohya_unet.items()}
    alphas = module_alphas(kcfg, prefixed)
    te = {f"text_encoder.{k}": v for k, v in te_sd.items()}
    alphas.update(module_alphas(tcfg, te))
    prefixed.update(te)
    kohya_file = out / "sd_kohya.safetensors"
    save_file(kohya_tensors(prefixed, alphas, False, {}, 1), str(kohya_file))
    fused = diffusers_fused("sd", ref, kohya_file)
    reference = peft_reference(
        "sd", ref, {"unet": (kcfg, kohya_unet), "text_encoder": (tcfg, te_sd)}
    )
    save_npz(out / "sd_kohya.npz", checked_kohya("sd kohya", fused, reference, report))

    # PEFT save_pretrained: a UNet adapter, and an rsLoRA text-encoder adapter
    fresh = load_base("sd", ref)
    peft_dir = out / "sd_peft_unet"
    model = get_peft_model(
        fresh["unet"], lora_config(pattern(SD_PEFT), RANK_PATTERN, ALPHA_PATTERN)
    )
    randomise_b(model)
    model.half().save_pretrained(str(peft_dir))
    save_npz(out / "sd_peft_unet.npz", peft_merged("sd", ref, "unet", peft_dir))
    rs_dir = out / "sd_peft_te_rslora"
    model = get_peft_model(
        fresh["text_encoder"], lora_config(pattern(SD_TE), use_rslora=True)
    )
    randomise_b(model)
    model.half().save_pretrained(str(rs_dir))
    save_npz(
        out / "sd_peft_te_rslora.npz", peft_merged("sd", ref, "text_encoder", rs_dir)
    )
    for folder in (peft_dir, rs_dir):
        (folder / "README.md").unlink()  # PEFT's model-card template, not a fixture


def make_sdxl(out: Path, ref: Path, report: Dict[str, float]) -> None:
    from safetensors.torch import save_file

    models = load_base("sdxl", ref)
    ucfg = lora_config(pattern(SDXL_UNET), RANK_PATTERN, KOHYA_ALPHA_PATTERN)
    unet_sd = peft_lora(models["unet"], ucfg)
    adapters = {"unet": (ucfg, unet_sd)}
    state = {f"unet.{k}": v for k, v in unet_sd.items()}
    alphas = module_alphas(ucfg, state)
    for part, modules in (("text_encoder", SDXL_TE), ("text_encoder_2", SDXL_TE2)):
        tcfg = lora_config(pattern(modules), alpha_pattern={"fc2": 4.0})
        te_sd = peft_lora(models[part], tcfg)
        adapters[part] = (tcfg, te_sd)
        te = {f"{part}.{k}": v for k, v in te_sd.items()}
        alphas.update(module_alphas(tcfg, te))
        state.update(te)
    up_attention = {
        i: hasattr(block, "attentions")
        for i, block in enumerate(models["unet"].up_blocks)
    }
    kohya_file = out / "sdxl_kohya_sgm.safetensors"
    save_file(kohya_tensors(state, alphas, True, up_attention, 1), str(kohya_file))
    fused = diffusers_fused("sdxl", ref, kohya_file)
    reference = peft_reference("sdxl", ref, adapters)
    save_npz(
        out / "sdxl_kohya_sgm.npz",
        checked_kohya("sdxl kohya SGM", fused, reference, report),
    )


def forward_vs_weight(module, weight: np.ndarray) -> float:
    """Relative difference between the adapted module's output and one with ``weight``."""
    import torch.nn.functional as F

    w = torch.from_numpy(weight)
    bias = module.bias
    if isinstance(module, torch.nn.Conv2d):
        x = torch.randn(1, w.shape[1], 5, 5)
        want = F.conv2d(x, w, bias, module.stride, module.padding)
    else:
        x = torch.randn(2, w.shape[1])
        want = F.linear(x, w, bias)
    got = module(x)
    return float((got - want).abs().max() / want.abs().max())


def make_lycoris(out: Path, ref: Path, report: Dict[str, float]) -> None:
    """LoHa and LoKr files written by lycoris-lora, with the weights its modules compute.

    The reference is base + each module's ``get_weight`` (alpha / dim applied once),
    which is what the module's forward adds; lycoris-lora 4.1.3's ``merge_to`` applies
    that scale a second time, which the report line measures.
    """
    from lycoris import LycorisNetwork, create_lycoris

    for algo, kwargs in LYCORIS_ALGOS.items():
        models = load_base("sd", ref)
        unet = models["unet"]
        before = weights(models)
        LycorisNetwork.apply_preset(
            {"target_module": [], "target_name": SD_LYCORIS, "lora_prefix": "lora_unet"}
        )
        net = create_lycoris(unet, 1.0, algo=algo, **kwargs)
        net.apply_to()
        with torch.no_grad():
            for name, p in net.named_parameters():
                scale = 0.3 if algo == "loha" else 0.2
                p.copy_((torch.randn_like(p) * scale).half().float())  # as saved
        assert len(net.loras) == len(SD_LYCORIS), [m.lora_name for m in net.loras]
        path = out / f"sd_{algo}.safetensors"
        net.save_weights(str(path), torch.float16, {})
        fused, worst = {}, 0.0
        with torch.no_grad():
            modules = dict(unet.named_modules())
            for module in net.loras:
                name = next(
                    n
                    for n in SD_LYCORIS
                    if module.lora_name == "lora_unet_" + n.replace(".", "_")
                )
                w = before[f"unet.{name}.weight"]
                delta = module.get_weight(w.shape).float().numpy()
                fused[f"unet.{name}.weight"] = w + delta
                worst = max(
                    worst,
                    forward_vs_weight(modules[name], fused[f"unet.{name}.weight"]),
                )
            net.restore()
            net.merge_to(1.0)
        merged = changed(before, weights(models))
        save_npz(out / f"sd_{algo}.npz", fused)
        report[f"lycoris {algo}: module forward vs base + get_weight"] = worst
        report[f"lycoris {algo}: merge_to vs get_weight (not asserted)"] = max_rel(
            merged, fused
        )
        del modules


def make(out: Path) -> Path:
    """Write every LoRA fixture into ``out / 'lora'``; returns that folder.

    The bases are the model fixtures in ``out`` (``SD_BASE``, ``SDXL_BASE``), which
    tools/make_reference_fixtures.py writes before it calls this.
    """
    out = Path(out)
    for base in (out / SD_BASE[0], out / SD_BASE[1], out / SDXL_BASE):
        if not base.exists():
            raise SystemExit(f"{base}: missing; run tools/make_reference_fixtures.py")
    lora = out / "lora"
    lora.mkdir(parents=True, exist_ok=True)
    for old in lora.iterdir():  # everything but the README is rewritten
        if old.name != "README.md":
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    allow_peft_021()
    torch.manual_seed(SEED)
    report: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_sd(lora, out, Path(tmp), report)
    make_sdxl(lora, out, report)
    make_lycoris(lora, out, report)
    for name, value in report.items():
        print(f"check: {name}: max relative difference {value:.2e}")
        assert value <= 1e-5 or "not asserted" in name, name
    total = sum(p.stat().st_size for p in lora.rglob("*") if p.is_file())
    print(f"wrote {lora}: {total / 1e6:.2f} MB")
    return lora


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    make(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
