"""Phrase -> token positions with upstream's own tokenizer, and ``(phrase:1.5)`` syntax.

Positions index the token sequence upstream feeds the text encoder: BOS is
position 0, so the prompt's first word starts at 1. Matching is by whole
words in the tokenizer's own word split ("art" never matches "cartoon"); a
word that BPE splits into several tokens contributes all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

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


def find_phrase_pipeline(pipe, prompt: str, phrase: str) -> List[int]:
    """find_phrase with a pipeline's tokenizer(s); SDXL's two tokenizers must agree."""
    tokenizers = [
        getattr(pipe, n)
        for n in ("tokenizer", "tokenizer_1", "tokenizer_2")
        if hasattr(pipe, n)
    ]
    if not tokenizers:
        raise ValueError("pipe: expected a StableDiffusion(XL) object with a tokenizer")
    found = [find_phrase(t, prompt, phrase) for t in tokenizers]
    if any(f != found[0] for f in found[1:]):
        raise ValueError(
            f"phrase {phrase!r}: the tokenizers disagree on its positions: {found}"
        )
    return found[0]


def prompt_length(pipe, prompt: str) -> int:
    """Number of tokens upstream gives prompt (BOS and EOS included)."""
    tokenizer = getattr(pipe, "tokenizer", None) or pipe.tokenizer_1
    return len(tokenizer.tokenize(prompt))


@dataclass(frozen=True)
class WeightedSpan:
    """A phrase of a parsed prompt with its weight and its characters in the clean text."""

    phrase: str
    weight: float
    start: int
    end: int


def parse_weights(prompt: str, step: float = 1.1) -> Tuple[str, List[WeightedSpan]]:
    """Parse ``(phrase:1.5)``, ``(phrase)`` (x step), ``[phrase]`` (/ step); nesting multiplies.

    Returns the prompt without the syntax (as upstream should see it) and the
    weighted spans in it; ``\\(`` and friends escape a bracket.
    """
    out: List[str] = []
    stack: List[Tuple[str, int]] = []  # (opening bracket, start in out)
    spans: List[Tuple[int, int, float]] = []
    i = 0
    while i < len(prompt):
        c = prompt[i]
        if c == "\\" and i + 1 < len(prompt) and prompt[i + 1] in "()[]":
            out.append(prompt[i + 1])
            i += 2
            continue
        if c in "([":
            stack.append((c, len("".join(out))))
        elif c in ")]":
            if not stack or stack[-1][0] != ("(" if c == ")" else "["):
                raise ValueError(
                    f"prompt: unbalanced {c!r} at character {i} of {prompt!r}"
                )
            opening, start = stack.pop()
            text = "".join(out)
            weight = step if opening == "(" else 1 / step
            if opening == "(":
                m = regex.search(r":\s*([0-9]*\.?[0-9]+)\s*$", text[start:])
                if m:
                    weight = float(m.group(1))
                    out = [text[: start + m.start()]]
            end = len("".join(out))
            spans.append((start, end, weight))
        else:
            out.append(c)
        i += 1
    if stack:
        raise ValueError(f"prompt: unclosed {stack[-1][0]!r} in {prompt!r}")
    text = "".join(out)
    char_w = [1.0] * len(text)
    for start, end, weight in spans:
        for k in range(start, end):
            char_w[k] *= weight
    # normalise whitespace the way the tokenizer does, keeping each character's weight
    cleaned: List[str] = []
    weights: List[float] = []
    for ch, w in zip(text, char_w):
        if ch.isspace():
            if cleaned and cleaned[-1] == " ":
                continue
            ch = " "
        cleaned.append(ch.lower())
        weights.append(w)
    final = "".join(cleaned)
    weighted: List[WeightedSpan] = []
    k = 0
    while k < len(final):
        j = k
        while j < len(final) and (weights[j] == weights[k] or final[j] == " "):
            j += 1
        phrase = final[k:j].strip()
        if weights[k] != 1.0 and phrase:
            s0 = k + (len(final[k:j]) - len(final[k:j].lstrip()))
            weighted.append(WeightedSpan(phrase, weights[k], s0, s0 + len(phrase)))
        k = j if j > k else k + 1
    return final, weighted


def span_positions(tokenizer, prompt: str, start: int, end: int) -> List[int]:
    """Token positions of the words overlapping characters [start, end) of clean(prompt)."""
    return [
        p
        for w in words(tokenizer, prompt)
        if w.start < end and w.end > start
        for p in w.positions
    ]


def weighted_positions(
    tokenizer, prompt: str, step: float = 1.1
) -> Tuple[str, List[Tuple[List[int], float]]]:
    """Parse the weight syntax; return the clean prompt and (token positions, weight) per span."""
    text, spans = parse_weights(prompt, step)
    return text, [
        (span_positions(tokenizer, text, s.start, s.end), s.weight) for s in spans
    ]
