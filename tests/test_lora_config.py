"""PEFT LoraConfig fields (adapter_config.json, lora_adapter_metadata) as the loader reads them."""

from __future__ import annotations

import json
import math

import pytest

from pulse_plugin.lora import config as C
from pulse_plugin.lora import formats

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def test_patterns_match_whole_names_or_dotted_suffixes_as_peft_does():
    cfg = C.from_dict(
        {
            "r": 4,
            "lora_alpha": 8,
            "rank_pattern": {"to_k": 2, r"mid_block\..*to_v": 8},
            "alpha_pattern": {"attn1.to_q": 1},
        },
        "cfg",
    )
    assert cfg.rank_alpha(f"{ATTN}.to_k") == (2, 8.0)
    assert cfg.rank_alpha(f"{ATTN}.to_q") == (4, 1.0)
    assert cfg.rank_alpha(f"{ATTN}.xto_k") == (4, 8.0)  # not a dotted suffix
    assert cfg.rank_alpha("mid_block.attentions.0.to_v") == (8, 8.0)
    assert C.scale(4, 8.0, rslora=False) == 2.0
    assert C.scale(4, 8.0, rslora=True) == 8.0 / math.sqrt(4)


def test_target_and_exclude_modules():
    listed = C.from_dict({"r": 4, "target_modules": ["to_q", "to_k"]}, "cfg")
    assert listed.targets(f"{ATTN}.to_q") and not listed.targets(f"{ATTN}.to_v")
    regex = C.from_dict(
        {"r": 4, "target_modules": r".*to_[qk]", "exclude_modules": ["attn1.to_k"]},
        "cfg",
    )
    assert regex.targets(f"{ATTN}.to_q") and not regex.targets(f"{ATTN}.to_k")
    assert C.from_dict({"r": 4}, "cfg").lora_alpha == 4.0  # alpha = r when missing


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "missing field 'r'"),
        ({"r": 0}, "r = 0"),
        ({"r": True}, "r = True"),
        ({"r": 4, "lora_alpha": -1}, "lora_alpha = -1"),
        ({"r": 4, "use_rslora": "yes"}, "use_rslora = 'yes'"),
        ({"r": 4, "use_dora": True}, "use_dora is true"),
        ({"r": 4, "lora_bias": True}, "lora_bias"),
        ({"r": 4, "modules_to_save": ["conv_in"]}, "modules_to_save"),
        ({"r": 4, "rank_pattern": {"(": 2}}, "not a pattern"),
        ({"r": 4, "alpha_pattern": {"to_q": float("inf")}}, r"alpha_pattern\['to_q'\]"),
        ({"r": 4, "peft_type": "LOKR"}, "peft_type = 'LOKR'"),
    ],
)
def test_fields_that_cannot_be_honoured_are_named(data, message):
    with pytest.raises(C.AdapterConfigError, match=message) as err:
        C.from_dict(data, "some/adapter_config.json")
    assert "some/adapter_config.json" in str(err.value)


def test_metadata_is_split_by_component():
    meta = {
        "unet.r": 4,
        "unet.lora_alpha": 8,
        "text_encoder.r": 2,
        "text_encoder_2.r": 8,
    }
    cfgs = C.from_metadata({C.METADATA_KEY: json.dumps(meta)}, "f")
    assert {k: (v.r, v.lora_alpha) for k, v in cfgs.items()} == {
        "unet": (4, 8.0),
        "te1": (2, 2.0),
        "te2": (8, 8.0),
    }
    assert C.from_metadata({}, "f") == {}
    with pytest.raises(C.AdapterConfigError, match="transformer.r"):
        C.from_metadata({C.METADATA_KEY: json.dumps({"transformer.r": 4})}, "f")
    with pytest.raises(C.AdapterConfigError, match="not JSON"):
        C.from_metadata({C.METADATA_KEY: "{"}, "f")


def test_peft_keys_name_their_component():
    te = "base_model.model.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"
    te5 = "base_model.model.encoder.layers.0.mlp.fc1.lora_B.weight"  # transformers 5
    unet = f"base_model.model.{ATTN}.to_q.lora_A.weight"
    assert formats.parse_key(te)[0] == "te1"
    assert formats.parse_key(te5)[:3] == ("te1", "encoder.layers.0.mlp.fc1", "up")
    assert formats.parse_key(te, peft_component="te2")[0] == "te2"
    assert formats.parse_key(unet) == ("unet", f"{ATTN}.to_q", "down", "peft")
