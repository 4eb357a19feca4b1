"""The live text of a JSON answer (stage0.llm.streaming.TextExtractor): fed the model's raw
text in any pieces, even one character at a time, it gives exactly the decoded `text` field,
escapes and surrogate pairs split across pieces included."""

from __future__ import annotations

import json

import pytest

from stage0.llm.streaming import TextExtractor

ANSWERS = [
    {"text": "plain words", "confidence": 0.5},
    {"confidence": 0.5, "actions": [{"action": "x", "args": {"text": "not this"}}],
     "text": "after other fields", "citations": ["text"]},
    {"text": 'quotes " and \\ backslash / slash\nnew line\ttab \b \f \r'},
    {"text": "unicode é ü 漢字 and an emoji 🙂 and 𝄞"},
    {"telemetry": {"text": "nested, never streamed"}, "text": "the top-level one"},
]


def pieces(raw, size):
    return [raw[i:i + size] for i in range(0, len(raw), size)]


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_any_split_gives_the_decoded_text(answer, ascii_only, size):
    raw = json.dumps(answer, ensure_ascii=ascii_only, indent=1 if size == 3 else None)
    extractor = TextExtractor()
    out = "".join(extractor.feed(p) for p in pieces(raw, size))
    assert out == answer["text"]
    assert extractor.done


def test_text_comes_as_it_arrives_and_a_fence_is_skipped():
    extractor = TextExtractor()
    assert extractor.feed('```json\n{"text": "Hel') == "Hel"
    assert extractor.feed("lo \\u00") == "lo "
    assert extractor.feed("e9\\") == "é"
    assert extractor.feed('n", "confidence": 1}\n```') == "\n"


def test_a_lone_surrogate_is_replaced_not_passed_on():
    extractor = TextExtractor()
    assert extractor.feed('{"text": "a\\ud83d"}') == "a\ufffd"


def test_no_text_field_gives_nothing():
    extractor = TextExtractor()
    assert extractor.feed('not json at all "text": "x"') == ""
    assert extractor.feed('{"confidence": 1, "texts": "no"}') == ""
