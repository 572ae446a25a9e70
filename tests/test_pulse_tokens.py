"""Phrase -> token positions through upstream's tokenizer, and the weight syntax."""

import pytest

from pulse_plugin import tiny, upstream
from pulse_plugin.tokens import (
    find_phrase,
    find_phrase_spans,
    parse_weights,
    weighted_positions,
)


@pytest.fixture(scope="module")
def tok():
    return tiny.make_tokenizer(upstream.load(patched=True))


def test_positions_index_the_tokenized_prompt(tok):
    prompt = "a red cartoon cat with blue art"
    ids = tok.tokenize(prompt)
    for phrase in ["red", "cartoon", "cat", "blue art"]:
        pos = find_phrase(tok, prompt, phrase)
        expected = tok.tokenize(phrase, prepend_bos=False, append_eos=False)
        assert [ids[p] for p in pos] == expected
    assert find_phrase(tok, prompt, "red")[0] == 2  # BOS is position 0


def test_whole_words_only_and_multi_token_words(tok):
    prompt = "a red cartoon cat with blue art"
    assert len(find_phrase(tok, prompt, "cartoon")) > 1  # several BPE tokens
    assert find_phrase(tok, prompt, "art") == [len(tok.tokenize(prompt)) - 2]


def test_every_occurrence(tok):
    prompt = "red cat and red dog"
    spans = find_phrase_spans(tok, prompt, "red")
    ids = tok.tokenize(prompt)
    red = tok.tokenize("red", prepend_bos=False, append_eos=False)
    assert len(spans) == 2 and spans[0] == [1]
    assert all([ids[p] for p in span] == red for span in spans)


def test_missing_phrase_names_the_words(tok):
    with pytest.raises(ValueError, match=r"\['a', 'red', 'cat'\]"):
        find_phrase(tok, "a red cat", "dog")


def test_weight_syntax(tok):
    text, spans = parse_weights("a (red:1.5) cat, ((blue)) [dog] \\(x\\)")
    assert text == "a red cat, blue dog (x)"
    assert [(s.phrase, round(s.weight, 6)) for s in spans] == [
        ("red", 1.5),
        ("blue", 1.21),
        ("dog", round(1 / 1.1, 6)),
    ]
    text, pos = weighted_positions(tok, "a (red cat:2) dog")
    assert pos == [(find_phrase(tok, text, "red cat"), 2.0)]
    with pytest.raises(ValueError, match="unbalanced"):
        parse_weights("a red) cat")
