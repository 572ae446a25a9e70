"""Bending configs: loading TOML/JSON/YAML, errors that name the field, prompt syntax."""

import json
from pathlib import Path

import pytest

from pulse_plugin.bending import config as C

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bending.toml"


def test_example_toml_loads():
    s = C.load_settings(EXAMPLE)
    assert not s.apply_to_output and [b.mode for b in s.bends] == [
        "scale",
        "regional_mask",
        "blur",
    ]
    assert s.bends[0].apply_to_timesteps == (0, 15)
    assert s.bends[1].region == (0.0, 0.0, 1.0, 0.5)


def test_json_and_yaml_match_toml(tmp_path):
    data = {
        "attention_bending": {
            "phase": "apply",
            "configs": [{"token": "kiss", "mode": "flip", "flip": "vertical"}],
        }
    }
    (tmp_path / "b.json").write_text(json.dumps(data))
    s = C.load_settings(tmp_path / "b.json")
    assert s.apply_to_output and s.bends[0].flip == "vertical"
    yaml = pytest.importorskip("yaml")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    assert C.load_settings(tmp_path / "b.yaml") == s


@pytest.mark.parametrize(
    "bend, field",
    [
        ({"token": "k", "mode": "scal"}, "configs[0].mode"),
        ({"token": "k", "mode": "scale", "strength": 1.5}, "configs[0].strength"),
        ({"token": "k", "mode": "scale", "scale_factr": 2}, "configs[0].scale_factr"),
        ({"mode": "scale"}, "configs[0].token"),
        ({"token": "k", "mode": "blur", "kernel_size": 4}, "configs[0].kernel_size"),
        ({"token": "k", "mode": "regional_mask", "region": [0.5, 0, 0.2, 1]}, "region"),
        ({"token": "k", "mode": "flip", "flip": "diagonal"}, "configs[0].flip"),
        ({"token": "k", "mode": "scale", "apply_to_timesteps": [5, 2]}, "timesteps"),
        ({"token": "k", "mode": "scale", "sigma_range": [3, 1]}, "sigma_range"),
        ({"token": "k", "mode": "scale", "apply_to_layers": [1.5]}, "apply_to_layers"),
    ],
)
def test_errors_name_the_field(bend, field):
    with pytest.raises(
        C.ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")
    ):
        C.settings_from_dict({"configs": [bend]})


def test_dataclass_validates_and_unknown_top_level_field():
    with pytest.raises(C.ConfigError, match="^zoom"):
        C.BendConfig("kiss", "spatial_scale", zoom=0)
    with pytest.raises(C.ConfigError, match="^apply_to_outptu"):
        C.settings_from_dict({"apply_to_outptu": True})
    assert C.BendConfig("kiss", "scale").label == "kiss:scale"


def test_parse_prompt():
    assert C.parse_prompt("a romantic (kiss) at (sunset)") == (
        "a romantic kiss at sunset",
        ["kiss", "sunset"],
    )
    assert C.parse_prompt("no marks") == ("no marks", [])
    with pytest.raises(C.ConfigError, match="prompt"):
        C.parse_prompt("a (kiss")
