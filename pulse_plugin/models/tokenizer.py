"""CLIP tokenizer folders: ``vocab.json`` + ``merges.txt``, or ``tokenizer.json`` alone.

transformers 5 saves a CLIP tokenizer as ``tokenizer.json`` and
``tokenizer_config.json`` only; its ``model`` section holds the BPE vocabulary
and merges that ``vocab.json``/``merges.txt`` hold in older folders. Either way
the result is upstream's own ``Tokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Tuple

from .config import ModelError, ModelNotFoundError, read_json

# upstream reads at most this many merges from merges.txt (as transformers' CLIPTokenizer)
MAX_MERGES = 49152 - 256 - 2
SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _from_legacy(part: Path) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    vocab = read_json(part / "vocab.json")
    lines = (part / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
    # the first line is the "#version" header, as upstream and transformers skip it
    merges = [tuple(m.split()) for m in lines[1 : MAX_MERGES + 1]]
    return vocab, merges


def _from_tokenizer_json(path: Path) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    data = read_json(path)
    model = data.get("model")
    if not isinstance(model, dict):
        raise ModelError(f"{path}: field 'model' is missing")
    checks = (("type", "BPE"), ("end_of_word_suffix", "</w>"))
    for field, want in checks:
        if model.get(field) != want:
            raise ModelError(
                f"{path}: model.{field} = {json.dumps(model.get(field))}; upstream's "
                f"CLIP tokenizer implements {json.dumps(want)}"
            )
    if model.get("continuing_subword_prefix") not in (None, ""):
        raise ModelError(
            f"{path}: model.continuing_subword_prefix = "
            f"{json.dumps(model['continuing_subword_prefix'])}; upstream's CLIP tokenizer has none"
        )
    vocab, raw = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(raw, list):
        raise ModelError(
            f"{path}: model.vocab (object) and model.merges (list) are required"
        )
    merges = []
    for m in raw:  # "a b" (tokenizers < 0.20) or ["a", "b"]
        pair = m.split(" ") if isinstance(m, str) else m
        if not isinstance(pair, list) or len(pair) != 2:
            raise ModelError(f"{path}: model.merges holds {json.dumps(m)}, not a pair")
        merges.append(tuple(pair))
    for token in data.get("added_tokens", []):
        content, index = token.get("content"), token.get("id")
        if content in vocab and vocab[content] != index:
            raise ModelError(
                f"{path}: added token {content!r} has id {index}, the vocabulary {vocab[content]}"
            )
        vocab.setdefault(content, index)
    return vocab, merges


def read_vocab(part: Path) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """The vocabulary and the merges (in rank order) of a tokenizer folder."""
    part = Path(part)
    if (part / "vocab.json").is_file() and (part / "merges.txt").is_file():
        vocab, merges = _from_legacy(part)
    elif (part / "tokenizer.json").is_file():
        vocab, merges = _from_tokenizer_json(part / "tokenizer.json")
    else:
        raise ModelNotFoundError(
            f"{part}: no tokenizer (expected vocab.json and merges.txt, or tokenizer.json)"
        )
    for token in SPECIAL:
        if token not in vocab:
            raise ModelError(
                f"{part}: the vocabulary lacks {token}, which upstream's tokenizer uses"
            )
    return vocab, merges


def load_tokenizer(sd: ModuleType, part: Path):
    """Upstream's Tokenizer for a tokenizer folder."""
    vocab, merges = read_vocab(part)
    ranks = {pair: i for i, pair in enumerate(merges)}
    return sd.tokenizer.Tokenizer(ranks, vocab)
