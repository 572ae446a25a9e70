"""Prompt-weighting syntax as people write it: AUTOMATIC1111's and compel's.

A1111: ``(word)`` x1.1, ``((word))`` x1.21, ``(word:1.4)``, ``[word]`` /1.1, nesting
multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters, and an unclosed
bracket weights the rest of the prompt (as A1111 does; a warning says so).
compel: ``word+`` x1.1, ``word++`` x1.21, ``word-`` x0.9, ``(some words)+``,
``(some words)1.3``, ``"some words"-``, nesting multiplies, ``(words)`` alone is only
grouping; an unbalanced bracket is an error.

Parsing gives a :class:`WeightedPrompt`: the text without the marks (what the
tokenizer must see) and its segments with their weights. What the weights act on
is the caller's choice (``Pulse.prompt_weights``): attention probabilities, or
A1111's scaled token embeddings. Neither syntax's other features (A1111's ``AND``,
``BREAK``, ``[from:to:when]``, ``[a|b]``; compel's ``.blend()``, ``.and()``,
``.swap()``, ``.attend()``) are read: they are refused by name.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import regex

SYNTAXES = ("a1111", "compel")
STEP_UP = 1.1
STEP_DOWN_COMPEL = 0.9


@dataclass(frozen=True)
class Segment:
    text: str
    weight: float


@dataclass(frozen=True)
class WeightedSpan:
    """A weighted phrase: its characters [start, end) in the tokenizer's clean text."""

    phrase: str
    weight: float
    start: int
    end: int


@dataclass(frozen=True)
class WeightedPrompt:
    source: str
    segments: Tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The prompt without the weighting marks."""
        return "".join(s.text for s in self.segments)

    def spans(self) -> List[WeightedSpan]:
        """The phrases whose weight is not 1, in the clean (lower-case, single-space) text."""
        chars: List[Tuple[str, float]] = []
        for seg in self.segments:
            for ch in seg.text:
                if ch.isspace():
                    if chars and chars[-1][0] == " ":
                        continue
                    ch = " "
                chars.append((ch.lower(), seg.weight))
        out: List[WeightedSpan] = []
        k = 0
        while k < len(chars):
            j = k
            while j < len(chars) and chars[j][1] == chars[k][1]:
                j += 1
            weight = chars[k][1]
            piece = "".join(c for c, _ in chars[k:j])
            phrase = piece.strip()
            if weight != 1.0 and phrase:
                start = k + len(piece) - len(piece.lstrip())
                out.append(WeightedSpan(phrase, weight, start, start + len(phrase)))
            k = j
        return out


def _merge(pieces: List[List]) -> Tuple[Segment, ...]:
    out: List[List] = []
    for text, weight in pieces:
        if out and out[-1][1] == weight:
            out[-1][0] += text
        else:
            out.append([text, weight])
    return tuple(Segment(t, w) for t, w in out) or (Segment("", 1.0),)


def _refuse(prompt: str, pattern: str, what: str) -> None:
    if regex.search(pattern, prompt):
        raise ValueError(f"prompt {prompt!r}: {what} is not supported here")


def _scale_from(pieces: List[List], start: int, factor: float) -> None:
    for piece in pieces[start:]:
        piece[1] *= factor


# A1111's tokens: escapes, brackets, ':number)' and runs of anything else.
_A1111 = regex.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[0-9.]+)\s*\)|\)|\]|[^\\()\[\]:]+|:"
)


def parse_a1111(prompt: str) -> WeightedPrompt:
    """AUTOMATIC1111's emphasis syntax."""
    _refuse(prompt, r"\bAND\b", "A1111's 'AND' (composable diffusion)")
    _refuse(prompt, r"\bBREAK\b", "A1111's 'BREAK'")
    _refuse(
        prompt, r"(?<!\\)\[[^\]]*:[^\]]*\]", "A1111's prompt editing [from:to:when]"
    )
    _refuse(prompt, r"(?<!\\)\[[^\]]*\|[^\]]*\]", "A1111's alternation [a|b]")
    pieces: List[List] = []
    rounds: List[int] = []
    squares: List[int] = []
    for m in _A1111.finditer(prompt):
        tok, number = m.group(0), m.group(1)
        if len(tok) == 2 and tok[0] == "\\":
            pieces.append([tok[1], 1.0])
        elif tok == "(":
            rounds.append(len(pieces))
        elif tok == "[":
            squares.append(len(pieces))
        elif number is not None and rounds:
            weight = _number(prompt, number)
            _scale_from(pieces, rounds.pop(), weight)
        elif tok == ")" and rounds:
            _scale_from(pieces, rounds.pop(), STEP_UP)
        elif tok == "]" and squares:
            _scale_from(pieces, squares.pop(), 1 / STEP_UP)
        else:
            pieces.append([tok, 1.0])
    if rounds or squares:
        warnings.warn(
            f"prompt {prompt!r}: {len(rounds) + len(squares)} bracket(s) never closed;"
            " as in A1111, each weights the rest of the prompt",
            stacklevel=2,
        )
    for start in rounds:
        _scale_from(pieces, start, STEP_UP)
    for start in squares:
        _scale_from(pieces, start, 1 / STEP_UP)
    return WeightedPrompt(prompt, _merge(pieces))


def _number(prompt: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"prompt {prompt!r}: weight {text!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"prompt {prompt!r}: weight {text!r} is not finite")
    return value


# compel: a weight is a run of + or -, or a number, after a word, a group or a quote.
_COMPEL = regex.compile(r'\\[()"\\]|[()"]|\s+|[^\s()"\\]+|\\')
_RUN_SUFFIX = regex.compile(r"^(.*?[^+\-])(\++|-+)([,;.!?]*)$")
_GROUP_SUFFIX = regex.compile(r'(\++|-+|[0-9]*\.?[0-9]+)(?=$|[\s,;.!?)"])')


def _suffix_weight(prompt: str, suffix: str) -> float:
    if suffix[0] == "+":
        return STEP_UP ** len(suffix)
    if suffix[0] == "-":
        return STEP_DOWN_COMPEL ** len(suffix)
    return _number(prompt, suffix)


def parse_compel(prompt: str) -> WeightedPrompt:
    """compel's weighting syntax (``+``/``-``/number after a word, a group or a quote)."""
    _refuse(
        prompt, r"\.(blend|and|swap|attend)\(", "compel's .blend/.and/.swap/.attend"
    )
    pieces: List[List] = []
    opened: List[Tuple[str, int, int]] = []  # (bracket, first piece, character)
    i = 0
    while i < len(prompt):
        m = _COMPEL.match(prompt, i)
        tok = m.group(0)
        i = m.end()
        closes = tok == ")" or (tok == '"' and opened and opened[-1][0] == '"')
        if len(tok) == 2 and tok[0] == "\\":
            pieces.append([tok[1], 1.0])
        elif tok in ("(", '"') and not closes:
            opened.append((tok, len(pieces), m.start()))
        elif closes:
            if not opened or opened[-1][0] != ("(" if tok == ")" else '"'):
                raise ValueError(
                    f"prompt {prompt!r}: unbalanced {tok!r} at character {m.start()}"
                )
            start = opened.pop()[1]
            suffix = _GROUP_SUFFIX.match(prompt, i)
            if suffix:
                _scale_from(pieces, start, _suffix_weight(prompt, suffix.group(1)))
                i = suffix.end()
        else:
            run = _RUN_SUFFIX.match(tok)
            if run and not tok[0].isspace():
                pieces.append([run.group(1), _suffix_weight(prompt, run.group(2))])
                pieces.append([run.group(3), 1.0])
            else:
                pieces.append([tok, 1.0])
    if opened:
        bracket, _, at = opened[-1]
        raise ValueError(
            f"prompt {prompt!r}: {bracket!r} at character {at} is never closed"
        )
    return WeightedPrompt(prompt, _merge([p for p in pieces if p[0]]))


def parse(prompt: str, syntax: str) -> WeightedPrompt:
    """Parse prompt in one of SYNTAXES."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a string, got {prompt!r}")
    if syntax == "a1111":
        return parse_a1111(prompt)
    if syntax == "compel":
        return parse_compel(prompt)
    raise ValueError(f"syntax: expected one of {SYNTAXES}, got {syntax!r}")
