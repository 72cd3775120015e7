"Heavier checks of cs336_nb.evaluation (Lecture 10): data loaders, parsers, scoring, the harness, ratings, contamination."
import json
import math
import os

import pytest

from cs336_nb import evaluation as E

HAVE_DATA = bool(os.environ.get("CS336_DATA")) and os.path.isdir(os.path.join(os.environ.get("CS336_DATA", ""), "mmlu"))
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="needs the shared data ($CS336_DATA with mmlu/ and gsm8k/)")


@pytest.mark.parametrize("text,want", [
    ("The answer is 42.", "42"), ("$1,000,000 total", "1000000"), ("3.50 dollars", "3.5"), ("-7 degrees", "-7"),
    ("first 12 then 13", "13"), ("10, 20, 30", "30"), ("nothing", None), ("0.0", "0"), ("#### 1,234", "1234"),
])
def test_parse_gsm8k_response(text, want):
    assert E.parse_gsm8k_response(text) == want


@pytest.mark.parametrize("out,want", [
    ("The correct answer is B", "B"), ("the correct answer is (D).", "D"), ("THE CORRECT ANSWER IS A", "A"),
    ("The correct answer is", None), ("Answer: C", None), ("The correct answer is E", None),
    ("The correct answer is Blue", "B"),
])
def test_parse_mmlu_response(out, want):
    ex = dict(question="q", choices=["x", "Blue", "y", "z"], answer="B")
    assert E.parse_mmlu_response(ex, out) == want


def test_gsm8k_answer_extraction_and_match():
    assert E.extract_gsm8k_answer("a\nb <<2*3=6>>6\n#### 6") == "6"
    assert E.gsm8k_match("6.0", "6") and not E.gsm8k_match("6.5", "6")
    with pytest.raises(ValueError, match="####"):
        E.extract_gsm8k_answer("6")


@needs_data
def test_loaders_on_shared_data():
    assert len(E.mmlu_subjects()) == 57
    val = E.load_mmlu("val")
    assert len(val) == 1531 and {e["answer"] for e in val} == set("ABCD")
    g = E.load_gsm8k("test")
    assert len(g) == 1319 and all(x["target"] == E.extract_gsm8k_answer(x["answer"]) for x in g)


def test_missing_data_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("CS336_DATA", str(tmp_path))
    monkeypatch.setenv("CS336_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CS336_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="data.tar"):
        E.load_mmlu()
    with pytest.raises(FileNotFoundError, match="gsm8k/test.jsonl"):
        E.load_gsm8k()
