"""Recipes: TOML/JSON/flags parse to technique entries, and bad input names the field."""

import json

import numpy as np
import pytest

from pulse_plugin import recipe, tiny
from pulse_plugin.pulse import Pulse


def test_toml_and_json_give_the_same_recipe(tmp_path):
    data = {
        "inject": [{"block": "mid", "prompt": "blue", "weight": 0.5}],
        "mask": [{"phrase": "red"}],
    }
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "r.toml").write_text(
        '[[inject]]\nblock = "mid"\nprompt = "blue"\nweight = 0.5\n\n[[mask]]\nphrase = "red"\n'
    )
    assert (
        recipe.load(tmp_path / "r.json").techniques
        == recipe.load(tmp_path / "r.toml").techniques
        == data
    )


def test_flags_parse_numbers_and_lists():
    assert recipe.parse_flag("inject", "block=all,prompt=a blue circle,weight=0.8") == {
        "block": "all",
        "prompt": "a blue circle",
        "weight": 0.8,
    }
    assert recipe.parse_flag("keep_only", 'phrases=["red","circle"]') == {
        "phrases": ["red", "circle"]
    }
    with pytest.raises(recipe.RecipeError, match="expected key=value"):
        recipe.parse_flag("inject", "blue")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"injekt": []}, "unknown section 'injekt'"),
        ({"inject": "blue"}, "must be a list of tables"),
        ({"generate": {"stepz": 3}}, "unknown field 'stepz'"),
    ],
)
def test_bad_recipes_name_what_is_wrong(data, message):
    with pytest.raises(recipe.RecipeError, match=message):
        recipe.from_dict(data)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(recipe.RecipeError, match="no such recipe file"):
        recipe.load(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[[inject]\n")
    with pytest.raises(recipe.RecipeError, match="bad.toml: not valid TOML"):
        recipe.load(tmp_path / "bad.toml")
    (tmp_path / "r.yaml").write_text("inject: []")
    with pytest.raises(recipe.RecipeError, match="expected a .toml or .json"):
        recipe.load(tmp_path / "r.yaml")


def test_apply_to_names_the_entry_and_field(sd):
    pipe = tiny.build_pipeline(sd, tiny.TinyConfig())
    prompt = "a red circle on the left"
    with pytest.raises(
        recipe.RecipeError, match=r"^recipe: inject\[0\]: unknown field 'wieght'"
    ):
        recipe.from_dict({"inject": [{"block": "all", "prompt": "blue", "wieght": 2}]})
    with Pulse(pipe, prompt=prompt) as pulse:
        bad = recipe.from_dict(
            {"reweight": [{"phrase": "green", "scale": 2}]}, "r.toml"
        )
        with pytest.raises(
            recipe.RecipeError, match=r"^r.toml: reweight\[0\]: .*green"
        ):
            recipe.apply_to(pulse, bad)


def test_recipe_techniques_match_direct_calls(sd):
    """A recipe entry does exactly what the Pulse method call does."""
    pipe = tiny.build_pipeline(sd, tiny.TinyConfig())
    prompt = "a red circle on the left"

    def run(setup):
        with Pulse(pipe, prompt=prompt, num_steps=2) as pulse:
            setup(pulse)
            return np.array(
                list(
                    pipe.generate_latents(
                        prompt, num_steps=2, latent_size=(8, 8), seed=2
                    )
                )[-1]
            )

    rec = recipe.from_dict(
        {
            "inject": [{"block": "mid", "prompt": "a blue square"}],
            "reweight": [{"phrase": "red", "scale": 3}],
        }
    )
    via_recipe = run(lambda p: recipe.apply_to(p, rec))
    direct = run(lambda p: (p.inject("mid", "a blue square"), p.reweight("red", 3)))
    baseline = run(lambda p: None)
    assert np.array_equal(via_recipe, direct)
    assert not np.array_equal(via_recipe, baseline)
