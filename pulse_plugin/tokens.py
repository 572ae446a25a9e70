"""Phrase -> token positions with upstream's own tokenizer.

Positions index the token sequence upstream feeds the text encoder: BOS is
position 0, so the prompt's first word starts at 1. Matching is by whole
words in the tokenizer's own word split ("art" never matches "cartoon"); a
word that BPE splits into several tokens contributes all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import regex

_SPACES = regex.compile(r"\s+")


@dataclass(frozen=True)
class Word:
    """One word of the tokenizer's split: its text, characters and token positions."""

    text: str
    start: int
    end: int
    positions: Tuple[int, ...]


def clean(text: str) -> str:
    """The text as upstream's tokenizer sees it (lower case, single spaces)."""
    return _SPACES.sub(" ", text.lower())


def words(tokenizer, prompt: str) -> List[Word]:
    """The prompt's words with their token positions (BOS is position 0)."""
    text = clean(prompt)
    out: List[Word] = []
    pos = 1
    for match in tokenizer.pat.finditer(text):
        n = len(tokenizer.bpe(match.group()))
        out.append(
            Word(match.group(), match.start(), match.end(), tuple(range(pos, pos + n)))
        )
        pos += n
    return out


def _check_length(tokenizer, prompt: str, ws: Sequence[Word]) -> None:
    expected = len(tokenizer.tokenize(prompt))
    found = 2 + sum(len(w.positions) for w in ws)
    if expected != found:
        raise RuntimeError(
            f"tokenizer split {prompt!r} into {expected} tokens, the word map into {found}"
        )


def _encoders(pipe) -> List[Tuple[object, object]]:
    """(tokenizer, text encoder) pairs of a pipeline: one for SD, two for SDXL."""
    pairs = [("tokenizer", "text_encoder"), ("tokenizer_1", "text_encoder_1")]
    pairs.append(("tokenizer_2", "text_encoder_2"))
    return [
        (getattr(pipe, t), getattr(pipe, e))
        for t, e in pairs
        if hasattr(pipe, t) and hasattr(pipe, e)
    ]


def unknown_pieces(tokenizer, prompt: str) -> List[str]:
    """The pieces of prompt the tokenizer's vocabulary has no token for (e.g. an emoji)."""
    pieces = [
        piece
        for match in tokenizer.pat.finditer(clean(prompt))
        for piece in tokenizer.bpe(match.group())
    ]
    return [p.replace("</w>", "") for p in pieces if p not in tokenizer.vocab]


def check_prompt(pipe, prompt: str, name: str = "prompt") -> None:
    """ValueError naming the field unless every tokenizer can encode prompt within its limit.

    Upstream's tokenizer has no fallback for characters outside its vocabulary
    and does not truncate, so such prompts are refused here, up front.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"{name}: expected a string, got {prompt!r}")
    for tokenizer, encoder in _encoders(pipe):
        unknown = unknown_pieces(tokenizer, prompt)
        if unknown:
            raise ValueError(
                f"{name}: the tokenizer has no token for {sorted(set(unknown))} in "
                f"{prompt!r}; leave out or replace those characters"
            )
        limit = encoder.position_embedding.weight.shape[0]
        n = len(tokenizer.tokenize(prompt))
        if n > limit:
            raise ValueError(
                f"{name}: {n} tokens (start and end marks included), more than the text "
                f"encoder's limit of {limit}; shorten the prompt"
            )


def find_phrase_spans(tokenizer, prompt: str, phrase: str) -> List[List[int]]:
    """Token positions of every whole-word occurrence of phrase in prompt, one list each."""
    ws = words(tokenizer, prompt)
    _check_length(tokenizer, prompt, ws)
    target = [m.group() for m in tokenizer.pat.finditer(clean(phrase))]
    if not target:
        raise ValueError(f"phrase: expected at least one word, got {phrase!r}")
    texts = [w.text for w in ws]
    spans = []
    for i in range(len(ws) - len(target) + 1):
        if texts[i : i + len(target)] == target:
            spans.append([p for w in ws[i : i + len(target)] for p in w.positions])
    if not spans:
        raise ValueError(
            f"phrase {phrase!r} is not in the prompt {prompt!r}; its words are {texts}"
        )
    return spans


def find_phrase(tokenizer, prompt: str, phrase: str) -> List[int]:
    """Token positions (BOS = 0) of phrase in prompt, all occurrences; ValueError if absent."""
    return sorted(
        {p for span in find_phrase_spans(tokenizer, prompt, phrase) for p in span}
    )


def _agreed(pipe, what: str, find: Callable[[object], List[int]]) -> List[int]:
    """find(tokenizer) with each of a pipeline's tokenizers; SDXL's two must agree."""
    tokenizers = [
        getattr(pipe, n)
        for n in ("tokenizer", "tokenizer_1", "tokenizer_2")
        if hasattr(pipe, n)
    ]
    if not tokenizers:
        raise ValueError("pipe: expected a StableDiffusion(XL) object with a tokenizer")
    found = [find(t) for t in tokenizers]
    if any(f != found[0] for f in found[1:]):
        raise ValueError(f"{what}: the tokenizers disagree: {found}")
    return found[0]


def find_phrase_pipeline(pipe, prompt: str, phrase: str) -> List[int]:
    """find_phrase with a pipeline's tokenizer(s); SDXL's two tokenizers must agree."""
    return _agreed(pipe, f"phrase {phrase!r}", lambda t: find_phrase(t, prompt, phrase))


def whole_word_positions(tokenizer, prompt: str, start: int, end: int) -> List[int]:
    """Token positions of the words in characters [start, end) of clean(prompt).

    ValueError if a word is only partly inside: its tokens cannot be split.
    """
    ws = words(tokenizer, prompt)
    _check_length(tokenizer, prompt, ws)
    inside = [w for w in ws if w.start < end and w.end > start]
    for w in inside:
        if w.start < start or w.end > end:
            raise ValueError(
                f"prompt {prompt!r}: a weight covers part of the word {w.text!r} only;"
                " weights apply to whole words here"
            )
    return [p for w in inside for p in w.positions]


def span_positions_pipeline(pipe, prompt: str, start: int, end: int) -> List[int]:
    """whole_word_positions with a pipeline's tokenizer(s)."""
    what = f"characters {start}-{end} of {prompt!r}"
    return _agreed(pipe, what, lambda t: whole_word_positions(t, prompt, start, end))


def token_ids(pipe, prompt: str) -> List[int]:
    """The ids upstream feeds the text encoder (BOS and EOS included); SDXL's two must agree."""
    return _agreed(pipe, f"prompt {prompt!r}", lambda t: t.tokenize(prompt))


def prompt_length(pipe, prompt: str) -> int:
    """Number of tokens upstream gives prompt (BOS and EOS included)."""
    tokenizer = getattr(pipe, "tokenizer", None) or pipe.tokenizer_1
    return len(tokenizer.tokenize(prompt))
