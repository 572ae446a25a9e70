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


@pytest.mark.parametrize(
    "top, field",
    [
        ({"record": "no"}, "record"),
        ({"enabled": 1}, "enabled"),
        ({"apply_to_output": "yes"}, "apply_to_output"),
    ],
)
def test_booleans_are_booleans(top, field):
    with pytest.raises(C.ConfigError, match=f"^{field}: expected true or false"):
        C.settings_from_dict(top)
    assert C.settings_from_dict({"record": False}).record is False


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), 1e309, "2", True, None, [2]]
)
def test_numbers_are_finite_numbers(value):
    with pytest.raises(C.ConfigError, match=r"^configs\[0\]\.scale_factor: expected"):
        C.settings_from_dict(
            {"configs": [{"token": "k", "mode": "scale", "scale_factor": value}]}
        )


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("b.yaml", "configs: [\n  {token: k", "not valid YAML"),
        ("b.yaml", "!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
        ("b.toml", 'record = "no"\n', "record: expected true or false"),
        ("b.yml", 'record: "no"\n', "record: expected true or false"),
        ("b.toml", "[attention_bending\n", "not valid TOML"),
        ("b.json", "{", "not valid JSON"),
        (
            "b.json",
            '{"configs": [{"token": "k", "mode": "zoom"}]}',
            r"configs\[0\]\.mode",
        ),
        ("b.txt", "", "expected a .toml, .json, .yaml or .yml"),
    ],
)
def test_file_errors_name_the_file_and_field(tmp_path, name, text, message):
    pytest.importorskip("yaml")
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(C.ConfigError, match=f"^{path}: .*{message}"):
        C.load_settings(path)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(C.ConfigError, match="no such settings file"):
        C.load_settings(tmp_path / "none.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(
        C.ConfigError, match="dir.toml: expected a settings file, got a folder"
    ):
        C.load_settings(tmp_path / "dir.toml")
