"""Tests for cs336_nb.tokenization (Lecture 1): the BPE trainer against a slow reference, the tokenizer against
tiktoken's GPT-2 encoding (built from the local GPT-2 files, no download), streaming, files and bad input."""
from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings, strategies as st

from cs336_nb.corpora import available, corpus_path
from cs336_nb.tokenization import (GPT2_PATTERN, Tokenizer, bytes_to_unicode, gpt2_tokenizer, pretokenize_counts,
                                   train_bpe)

EOT = "<|endoftext|>"
need = lambda *names: pytest.mark.skipif(not all(available(n) for n in names),
                                         reason=f"needs corpora {names} ($CS336_DATA)")


def naive_train_bpe(text: str, vocab_size: int, special_tokens: list[str]) -> list[tuple[bytes, bytes]]:
    "Reference BPE: recount all pairs at every step; most frequent wins, ties to the greater pair of byte strings."
    if special_tokens:
        segs = regex.split("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)), text)
    else:
        segs = [text]
    words = Counter(tuple(bytes([b]) for b in w.encode()) for s in segs for w in regex.findall(GPT2_PATTERN, s))
    merges = []
    while 256 + len(special_tokens) + len(merges) < vocab_size:
        counts = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]): counts[p] += f
        if not counts: break
        best = max(counts, key=lambda p: (counts[p], p))
        merges.append(best)
        new = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best: out.append(best[0] + best[1]); i += 2
                else: out.append(w[i]); i += 1
            new[tuple(out)] += f
        words = new
    return merges


@pytest.fixture(scope="module")
def corpus_en_bpe():
    p = corpus_path("corpus_en")
    return p, train_bpe(p, 500, [EOT], progress=False, num_workers=1)


@pytest.fixture(scope="module")
def gpt2():
    if not (available("gpt2_vocab") and available("gpt2_merges")): pytest.skip("needs the GPT-2 files ($CS336_DATA/gpt2)")
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {b: i for i, b in gpt2.vocab.items() if i != 50256}
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


# ------------------------------------------------------------------ training
@need("corpus_en")
def test_train_matches_reference_on_corpus_en(corpus_en_bpe):
    p, (vocab, merges) = corpus_en_bpe
    ref = naive_train_bpe(p.read_text(encoding="utf-8"), 500, [EOT])
    assert merges == ref
    assert len(vocab) == 500 and vocab[256] == EOT.encode()
    assert set(vocab) == set(range(500))
    assert all(vocab[i] == bytes([i]) for i in range(256))
    assert all(vocab[257 + i] == a + b for i, (a, b) in enumerate(merges))


@need("corpus_en")
def test_train_parallel_equals_inline(corpus_en_bpe, tmp_path):
    p, (vocab, merges) = corpus_en_bpe
    assert train_bpe(p, 500, [EOT], progress=False, num_workers=2) == (vocab, merges)
    # many small chunks and several processes give the same counts as one pass
    assert pretokenize_counts(p, [EOT], num_workers=3, chunk_bytes=4096) == pretokenize_counts(p, [EOT], num_workers=1)


@need("tinystories_sample")
def test_special_tokens_never_merge(tmp_path):
    p = corpus_path("tinystories_sample")
    vocab, merges = train_bpe(p, 400, [EOT], progress=False)
    assert merges == naive_train_bpe(p.read_text(encoding="utf-8"), 400, [EOT])
    assert not any(b"<|" in t for t in list(vocab.values())[257:])
    assert list(vocab.values()).count(EOT.encode()) == 1


def test_tie_break_prefers_greater_pair(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("ab ab cd cd yz yz", encoding="utf-8")   # every within-word pair occurs twice
    vocab, merges = train_bpe(p, 258, progress=False)
    assert merges == [(b"y", b"z"), (b"c", b"d")]     # the greatest pair of byte strings wins each tie


def test_train_stops_when_no_pairs_left(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("a b a b", encoding="utf-8")
    vocab, merges = train_bpe(p, 1000, progress=False)
    assert merges == [(b" ", b"b"), (b" ", b"a")] and len(vocab) == 258   # "a", " b", " a", " b": 2 pairs only


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["the", " cat", "\n", "  ", "'ll", "'", "l", "é", "🎉", EOT, "12", ".", "\n\n", "x\ny"]),
                max_size=80),
       st.integers(256 + 1, 300))
def test_train_random_texts_match_reference(tmp_path, pieces, vocab_size):
    text = "".join(pieces)
    p = tmp_path / "r.txt"
    p.write_text(text, encoding="utf-8")
    vocab, merges = train_bpe(p, vocab_size, [EOT], progress=False, num_workers=1)
    assert merges == naive_train_bpe(text, vocab_size, [EOT])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["a", "b.", "\n", " ", "\n\n", "'s", "x\ny", EOT, "<|", "é\n"]), max_size=300),
       st.integers(16, 200))
def test_chunked_counts_equal_whole(tmp_path, pieces, chunk):
    text = "".join(pieces)
    p = tmp_path / "c.txt"
    p.write_text(text, encoding="utf-8")
    whole = pretokenize_counts(p, [EOT], num_workers=1)
    assert pretokenize_counts(p, [EOT], num_workers=1, chunk_bytes=chunk) == whole


def test_train_bad_inputs(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab_size"): train_bpe(p, 256, [EOT], progress=False)
    with pytest.raises(TypeError, match="vocab_size"): train_bpe(p, "300", progress=False)
    with pytest.raises(FileNotFoundError, match="input_path"): train_bpe(tmp_path / "missing.txt", 300, progress=False)
    with pytest.raises(ValueError, match="duplicates"): train_bpe(p, 300, [EOT, EOT], progress=False)
    with pytest.raises(TypeError, match="special_tokens"): train_bpe(p, 300, EOT, progress=False)
    with pytest.raises(ValueError, match="num_workers"): train_bpe(p, 300, num_workers=0, progress=False)
    with pytest.raises(TypeError, match="input_path"): train_bpe(123, 300, progress=False)


# ------------------------------------------------------------------ tokenizer vs tiktoken
MULTILINGUAL = ("Héllo wörld! 你好，世界。こんにちは 🎉🚀 👨‍👩‍👧 Привет, мир! مرحبا بالعالم नमस्ते "
                "It's 3.14159 o'clock; we'll    see.\n\n\t" + EOT + "Ελληνικά 한국어 ½ ∑ x² " + EOT * 2)


@pytest.mark.parametrize("name", ["tinystories_sample", "tinyshakespeare", "corpus_en", "multilingual"])
def test_gpt2_ids_equal_tiktoken(gpt2, tiktoken_gpt2, name):
    if name == "multilingual": text = MULTILINGUAL
    else:
        if not available(name): pytest.skip(f"needs {name}")
        text = corpus_path(name).read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text
    if EOT in text: assert ids.count(50256) == text.count(EOT)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_gpt2_ids_equal_tiktoken_random(gpt2, tiktoken_gpt2, s):
    s = s.replace(EOT, "")
    assert gpt2.encode(s) == tiktoken_gpt2.encode_ordinary(s)
    assert gpt2.decode(gpt2.encode(s)) == s


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab 'lsv\n\t1é") + ["🎉", EOT, "<|", "|>"]), max_size=60).map("".join))
def test_roundtrip_trained(corpus_en_bpe, s):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges, [EOT])
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_roundtrip_any_unicode(corpus_en_bpe, s):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges, [EOT])
    assert tok.decode(tok.encode(s)) == s


# ------------------------------------------------------------------ streaming
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["'", "l", "ll", "s", " ", "  ", "\n", "a", "1", "é", "🎉", EOT, "<|endo", "ftext|>",
                                 "<|", "xt|><|"]), max_size=40),
       st.integers(1, 10))
def test_encode_iterable_equals_encode(corpus_en_bpe, pieces, buffer_chars):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges, [EOT, EOT + EOT, "xt|><|"])   # overlapping special tokens too
    assert list(tok.encode_iterable(iter(pieces), buffer_chars=buffer_chars)) == tok.encode("".join(pieces))


@need("tinyshakespeare")
def test_encode_iterable_over_file(gpt2):
    p = corpus_path("tinyshakespeare")
    text = p.read_text(encoding="utf-8")
    with open(p, encoding="utf-8") as f:
        assert list(gpt2.encode_iterable(f)) == gpt2.encode(text)
    # also a stream of large blocks, cut anywhere
    blocks = (text[i:i + 9999] for i in range(0, len(text), 9999))
    assert list(gpt2.encode_iterable(blocks, buffer_chars=5000)) == gpt2.encode(text)


def test_encode_iterable_is_lazy(corpus_en_bpe):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges, [EOT])
    def endless():
        while True: yield "the cat in the hat\n"
    it = tok.encode_iterable(endless())
    first = [next(it) for _ in range(10_000)]      # returns although the stream never ends
    assert tok.decode(first).startswith("the cat in the hat\nthe cat")


# ------------------------------------------------------------------ files, special tokens, errors
def test_save_and_load_roundtrip(corpus_en_bpe, tmp_path):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges, [EOT])
    tok.save(tmp_path / "v.json", tmp_path / "m.txt")
    back = Tokenizer.from_files(tmp_path / "v.json", tmp_path / "m.txt", [EOT])
    assert back.vocab == tok.vocab and back.merges == tok.merges
    assert not list(tmp_path.glob(".*tmp*"))                       # no temporary files left behind
    s = "the cat in the hat 🎉 " + EOT + " x"
    assert back.encode(s) == tok.encode(s)


@need("tinyshakespeare")
def test_saved_files_load_in_hf_tokenizers(corpus_en_bpe, tmp_path):
    tk = pytest.importorskip("tokenizers")
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges)
    tok.save(tmp_path / "v.json", tmp_path / "m.txt")
    hf = tk.Tokenizer(tk.models.BPE.from_file(str(tmp_path / "v.json"), str(tmp_path / "m.txt")))
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = corpus_path("tinyshakespeare").read_text(encoding="utf-8")[:50_000]
    assert hf.encode(text).ids == tok.encode(text)


def test_gpt2_files_format(gpt2):
    assert len(gpt2) == 50257 and gpt2.vocab[50256] == EOT.encode() and len(gpt2.merges) == 50000
    b2u = bytes_to_unicode()
    assert len(b2u) == 256 and len(set(b2u.values())) == 256 and b2u[ord(" ")] == "Ġ"
    assert gpt2.encode("hello world") == [31373, 995]


def test_longest_special_token_wins(corpus_en_bpe):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges, [EOT, EOT + EOT])
    ids = tok.encode("a" + EOT + EOT + "b" + EOT + EOT + EOT)
    dbl, single = tok._special_id[EOT + EOT], tok._special_id[EOT]
    assert [i for i in ids if i in (dbl, single)] == [dbl, dbl, single]


def test_tokenizer_bad_inputs(corpus_en_bpe, tmp_path):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges, [EOT])
    with pytest.raises(TypeError, match="text must be a str"): tok.encode(None)
    with pytest.raises(TypeError, match="text must be a str"): tok.encode(b"abc")
    with pytest.raises(TypeError, match="iterable"): list(tok.encode_iterable("a plain string"))
    with pytest.raises(TypeError, match="iterable must yield str"): list(tok.encode_iterable([b"x"]))
    with pytest.raises(ValueError, match="not a token id"): tok.decode([1, 10**9])
    with pytest.raises(TypeError, match="ids"): tok.decode("abc")
    with pytest.raises(ValueError, match="duplicates"): Tokenizer(vocab, merges, [EOT, EOT])
    with pytest.raises(TypeError, match="vocab"): Tokenizer([b"a"], merges)
    with pytest.raises(ValueError, match="256 single bytes"): Tokenizer({0: b"a"}, [])
    with pytest.raises(ValueError, match=r"merges\[0\]"): Tokenizer(vocab, [(b"zz", b"\x00q")])
    with pytest.raises(FileNotFoundError, match="vocab_path"): Tokenizer.from_files(tmp_path / "no.json", tmp_path / "no.txt")
    (tmp_path / "v.json").write_text("[1, 2]")
    (tmp_path / "m.txt").write_text("")
    with pytest.raises(ValueError, match="vocab_path"): Tokenizer.from_files(tmp_path / "v.json", tmp_path / "m.txt")
    with pytest.raises(FileNotFoundError, match="merges_path"): Tokenizer.from_files(tmp_path / "v.json", tmp_path / "x.txt")


def test_decode_malformed_utf8(corpus_en_bpe):
    _, (vocab, merges) = corpus_en_bpe
    tok = Tokenizer(vocab, merges)
    assert tok.decode([0xE4, 0xB8]) == "\ufffd"      # truncated 3-byte sequence
    assert tok.decode([0xFF, ord("a")]) == "\ufffda"


# ------------------------------------------------------------------ the benchmark script still runs
@need("corpus_en", "tinyshakespeare", "tinystories_sample", "gpt2_vocab", "gpt2_merges")
def test_benchmark_smoke(tmp_path):
    pytest.importorskip("tiktoken"); pytest.importorskip("tokenizers")
    import subprocess, sys
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_tokenization.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert {"training", "encoding", "stream", "scaling"} <= set(res)
    assert res["training"][0]["ours"]["vocab"] == 500 and res["training"][0]["hf"]["vocab"] == 500
    assert abs(res["training"][0]["ours"]["heldout_bytes_per_token"] - res["training"][0]["hf"]["heldout_bytes_per_token"]) < 0.05
    assert "| corpus | vocab |" in r.stdout and "| workers |" in r.stdout
