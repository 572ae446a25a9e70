"""Prompts upstream's tokenizer or text encoder cannot take are refused, naming the field."""

import pytest

from pulse_plugin import tiny
from pulse_plugin.pulse import Pulse
from pulse_plugin.tokens import check_prompt


def test_prompts_the_text_encoder_cannot_take_are_refused(sd):
    for pipe in (tiny.build_pipeline(sd, tiny.TinyConfig(sdxl=xl)) for xl in (0, 1)):
        limit = pipe.text_encoder_1 if hasattr(pipe, "text_encoder_1") else None
        limit = (limit or pipe.text_encoder).position_embedding.weight.shape[0]
        check_prompt(pipe, "a red cat")
        check_prompt(pipe, " ".join(["a"] * (limit - 2)))
        with pytest.raises(
            ValueError, match=f"^prompt: {limit + 1} tokens .* limit of {limit}"
        ):
            check_prompt(pipe, " ".join(["a"] * (limit - 1)))
        emoji = "a red \N{GRINNING FACE} cat"
        with pytest.raises(
            ValueError, match="^negative: the tokenizer has no token for"
        ):
            check_prompt(pipe, emoji, "negative")
        pulse = Pulse(pipe, prompt=emoji)
        with pytest.raises(ValueError, match="^prompt: the tokenizer has no token"):
            pulse.inject("all", emoji)
        with pytest.raises(ValueError, match="^prompt: the tokenizer has no token"):
            pulse.reweight("red", 2.0)
        assert pulse.techniques == []
