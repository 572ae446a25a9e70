"""Prompt-weighting syntax: the two projects' own documented examples, and refusals."""

import pytest

from pulse_plugin.prompt_weights import parse, parse_a1111, parse_compel

# AUTOMATIC1111's parse_prompt_attention docstring (modules/prompt_parser.py): input -> pairs.
A1111_DOCUMENTED = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]

# A1111's wiki (Features, "Attention/emphasis"): phrase -> its weight.
A1111_WIKI = [
    ("a (word)", "word", 1.1),
    ("a ((word))", "word", 1.21),
    ("a [word]", "word", 1 / 1.1),
    ("a (word:1.5)", "word", 1.5),
    ("a (word:0.25)", "word", 0.25),
]

# compel's tests (test/test_prompt_parser.py) and doc/syntax.md: fragments and weights.
COMPEL_DOCUMENTED = [
    ("fire flames", [("fire flames", 1)]),
    ("fire (flames)", [("fire flames", 1)]),
    ("cat hot-dog eating", [("cat hot-dog eating", 1)]),
    ("hamburger ((kaiser roll))", [("hamburger kaiser roll", 1)]),
    ("(flames)0.5", [("flames", 0.5)]),
    ("(fire flames)0.5", [("fire flames", 0.5)]),
    ("(flames)+", [("flames", 1.1)]),
    ("flames+", [("flames", 1.1)]),
    ('"flames"+', [("flames", 1.1)]),
    ("(flames)-", [("flames", 0.9)]),
    ("flames-", [("flames", 0.9)]),
    ("fire (flames)0.5", [("fire", 1), ("flames", 0.5)]),
    ("(flames)++", [("flames", 1.1**2)]),
    ("(flames)--", [("flames", 0.9**2)]),
    ("(flowers)--- flames+++", [("flowers", 0.9**3), ("flames", 1.1**3)]),
    (
        "(pretty flowers)+, the flames are too hot",
        [("pretty flowers", 1.1), (", the flames are too hot", 1)],
    ),
    ("fire flames++", [("fire", 1.0), ("flames", 1.1**2)]),
    ("flowers fire-- flames", [("flowers", 1.0), ("fire", 0.9**2), ("flames", 1.0)]),
    ("fire (flames (trees)1.5)2.0", [("fire", 1.0), ("flames", 2.0), ("trees", 3.0)]),
    ("a badly formed +test prompt", [("a badly formed +test prompt", 1)]),
    # doc/syntax.md: nesting, `apricots` effectively gets +++
    (
        "a tall thin man (picking apricots+)++",
        [("a tall thin man", 1), ("picking", 1.1**2), ("apricots", 1.1**3)],
    ),
    (
        "a tall thin man (picking (apricots)1.3)1.1",
        [("a tall thin man", 1), ("picking", 1.1), ("apricots", 1.3 * 1.1)],
    ),
]


def _pairs(weighted):
    return [(s.text, s.weight) for s in weighted.segments]


@pytest.mark.parametrize("prompt, expected", A1111_DOCUMENTED)
def test_a1111_documented_examples(prompt, expected, recwarn):
    got = _pairs(parse_a1111(prompt))
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize("prompt, phrase, weight", A1111_WIKI)
def test_a1111_wiki_table(prompt, phrase, weight):
    weighted = parse(prompt, "a1111")
    assert weighted.text == "a word"
    [span] = weighted.spans()
    assert span.phrase == phrase and span.weight == pytest.approx(weight, rel=1e-12)


def test_a1111_unclosed_bracket_warns():
    with pytest.warns(UserWarning, match="never closed"):
        parse_a1111("a (red cat")


def test_a1111_whitespace_in_the_weight_and_escapes():
    weighted = parse_a1111("a (red cat : 1.4) and \\(x\\) \\\\")
    assert weighted.text == "a red cat  and (x) \\"
    assert [(s.phrase, s.weight) for s in weighted.spans()] == [("red cat", 1.4)]


@pytest.mark.parametrize("prompt, expected", COMPEL_DOCUMENTED)
def test_compel_documented_examples(prompt, expected):
    got = [(" ".join(s.text.split()), s.weight) for s in parse_compel(prompt).segments]
    got = [(t, w) for t, w in got if t]
    want = [(" ".join(t.split()), w) for t, w in expected]
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-12)


def test_spans_are_in_the_tokenizers_clean_text():
    weighted = parse_a1111("A  (Red   Cat:2)  on [blue]")
    assert weighted.text == "A  Red   Cat  on blue"
    spans = weighted.spans()
    clean = "a red cat on blue"
    assert [(s.phrase, clean[s.start : s.end]) for s in spans] == [
        ("red cat", "red cat"),
        ("blue", "blue"),
    ]


@pytest.mark.parametrize(
    "syntax, prompt, message",
    [
        ("a1111", "a cat AND a dog", "AND"),
        ("a1111", "a cat BREAK a dog", "BREAK"),
        ("a1111", "a [cat:dog:0.5]", "prompt editing"),
        ("a1111", "a [cat|dog]", "alternation"),
        ("a1111", "a (cat:1.2.3)", "not a number"),
        ("compel", '("a", "b").blend(1, 1)', "blend"),
        ("compel", "a cat.swap(dog)", "swap"),
        ("compel", "a (cat", "never closed"),
        ("compel", "a cat)", "unbalanced"),
        ("other", "a cat", "syntax: expected one of"),
    ],
)
def test_refused_with_the_reason(syntax, prompt, message):
    with pytest.raises(ValueError, match=message):
        parse(prompt, syntax)
