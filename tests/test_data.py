"""Lecture 11 (cs336_nb.data): exact outputs on small hand-made fixtures, bad inputs, agreement with datasketch."""
import functools
import json
import math

import numpy as np
import pytest

from cs336_nb.data import (BloomFilter, QualityClassifier, Stage, affine_permutations, bloom_false_positive_rate, c4_filter,
                           classify_quality, decode_html, default_stages, document_signatures, exact_line_dedup,
                           extract_text, fail_on, fast_minhash_signatures, gopher_quality_filter, near_duplicate_clusters,
                           near_duplicate_corpus, ngram_hashes, ngrams_of_words, quality_stand_in_data, sample_pages,
                           gopher_rules, identify_language, iter_warc, jaccard, lsh_candidates, lsh_collision_probability,
                           mask_emails, mask_ips, mask_phone_numbers, measured_collision_rates, minhash_dedup,
                           minhash_permutations, minhash_signatures, naive_strip_tags, normalize_text, pareto_keep,
                           run_pipeline, shingle_hashes, word_ngrams, write_warc)

HTML = (b'<html><head><title>T</title><style>p {color: red}</style></head><body><nav><a href="/">Home</a></nav>'
        b'<h1>Title</h1><p>Caf&eacute; &amp; cr\xc3\xa8me.</p><footer>(c) 2024</footer></body></html>')


# ---------------------------------------------------------------- extraction
def test_extract_text_exact():
    assert extract_text(HTML) == "Title\n\nCafé & crème."
    assert naive_strip_tags(HTML.decode()) == "T Home Title Café & crème. (c) 2024"
    assert extract_text(b"<html><body></body></html>") is None


@pytest.mark.parametrize("encoding", ["shift_jis", "windows-1251", "gbk"])
def test_decode_legacy_encodings(encoding):
    text = {"shift_jis": "日本語のテキストです。今日は良い天気ですね。", "windows-1251": "Привет, как твои дела сегодня вечером?",
            "gbk": "这是一个中文句子，今天天气很好，我们去公园散步吧。"}[encoding]
    html = f'<html><head><meta charset="{encoding}"></head><body><p>{text}</p></body></html>'.encode(encoding)
    assert extract_text(html) == text


@pytest.mark.parametrize("bad", ["<p>str</p>", None, 3])
def test_extract_text_rejects_non_bytes(bad):
    with pytest.raises(TypeError, match="must be bytes"): extract_text(bad)


@pytest.mark.parametrize("name", ["x.warc", "x.warc.gz"])
def test_warc_round_trip(tmp_path, name):
    pages = [("http://a.example/", HTML, "utf-8"), ("http://b.example/", "<p>Ünïcode</p>".encode("latin-1"), "iso-8859-1")]
    docs = list(iter_warc(write_warc(tmp_path / name, pages)))
    assert [d.url for d in docs] == ["http://a.example/", "http://b.example/"]
    assert [d.html for d in docs] == [HTML, pages[1][1]]
    assert docs[1].charset == "iso-8859-1" and decode_html(docs[1].html, docs[1].charset) == "<p>Ünïcode</p>"
    assert not list(tmp_path.glob(".*tmp*"))


def test_iter_warc_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a readable file"): next(iter_warc(tmp_path / "none.warc.gz"))


# ---------------------------------------------------------------- language, PII
@pytest.mark.parametrize("text,code", [("The cat sat on the mat and looked out of the window.", "en"),
                                       ("Der Hund läuft schnell über die große Wiese.", "de"),
                                       ("El perro corre rápidamente por el parque grande.", "es")])
def test_identify_language(text, code):
    c, p = identify_language(text)
    assert c == code and type(p) is float and 0 <= p <= 1


@pytest.mark.parametrize("fn,text,expected", [
    (mask_emails, "mail a.b-c@x.example.org now", ("mail |||EMAIL_ADDRESS||| now", 1)),
    (mask_emails, "two: a@b.co, c@d.io", ("two: |||EMAIL_ADDRESS|||, |||EMAIL_ADDRESS|||", 2)),
    (mask_phone_numbers, "2831823829", ("|||PHONE_NUMBER|||", 1)),
    (mask_phone_numbers, "(283)-182-3829", ("|||PHONE_NUMBER|||", 1)),
    (mask_phone_numbers, "(283) 182 3829", ("|||PHONE_NUMBER|||", 1)),
    (mask_phone_numbers, "call 283-182-3829.", ("call |||PHONE_NUMBER|||.", 1)),
    (mask_phone_numbers, "id 912831823829 is long", ("id 912831823829 is long", 0)),   # 12 digits: not a phone
    (mask_ips, "host 192.168.1.254 up", ("host |||IP_ADDRESS||| up", 1)),
    (mask_ips, "not 256.1.1.1 nor 1.2.3", ("not 256.1.1.1 nor 1.2.3", 0)),
    (mask_emails, "|||EMAIL_ADDRESS||| stays", ("|||EMAIL_ADDRESS||| stays", 0)),
    (mask_phone_numbers, "|||PHONE_NUMBER||| stays", ("|||PHONE_NUMBER||| stays", 0)),
    (mask_ips, "|||IP_ADDRESS||| stays", ("|||IP_ADDRESS||| stays", 0)),
])
def test_pii(fn, text, expected):
    assert fn(text) == expected


# ---------------------------------------------------------------- Gopher, C4
def _words(k, word="abcde"): return " ".join([word] * k)


@pytest.mark.parametrize("text,rule,fails", [
    (_words(49), "num_words", True), (_words(50), "num_words", False),
    (_words(100_001), "num_words", True), (_words(100_000), "num_words", False),
    (_words(60, "ab"), "mean_word_length", True), (_words(60, "abc"), "mean_word_length", False),
    (_words(60, "a" * 11), "mean_word_length", True), (_words(60, "a" * 10), "mean_word_length", False),
    ("\n".join([_words(6) + " ..."] * 4 + [_words(6)] * 6), "ellipsis_lines", True),
    ("\n".join([_words(6) + " ..."] * 3 + [_words(6)] * 7), "ellipsis_lines", False),
    (" ".join(["abcde"] * 79 + ["12345"] * 21), "alphabetic_words", True),
    (" ".join(["abcde"] * 80 + ["12345"] * 20), "alphabetic_words", False),
])
def test_gopher_each_rule(text, rule, fails):
    r = gopher_rules(text)
    assert r[rule] is fails
    assert gopher_quality_filter(text) is not any(r.values())


def test_c4_filter_exact():
    page = "Menu\nWe sell fine tea. It is fresh.\nPlease enable JavaScript to view this.\nOur shop opens at nine!\nClick"
    assert c4_filter(page) == "We sell fine tea. It is fresh.\nOur shop opens at nine!"
    assert c4_filter("Only two sentences in here. And here is the second one.") is None
    assert c4_filter(page + "\nvar x = { a: 1 };") is None


# ---------------------------------------------------------------- dedup
def test_exact_line_dedup(tmp_path):
    (tmp_path / "in").mkdir()
    for name, text in {"a.txt": "x\nkeep a\ny\n", "b.txt": "y\nkeep b\nx", "c.txt": "x\n"}.items():
        (tmp_path / "in" / name).write_text(text)
    exact_line_dedup(sorted((tmp_path / "in").iterdir()), tmp_path / "out")
    got = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert got == {"a.txt": "keep a\n", "b.txt": "keep b\n", "c.txt": ""}


MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated "
       "documentation files, to deal in the Software without restriction, including without limitation the rights to "
       "use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit "
       "persons to whom the Software is furnished to do so, subject to the following conditions.")


@pytest.mark.parametrize("num_hashes,num_bands", [(100, 20), (128, 16), (64, 32)])
def test_minhash_dedup_licences(tmp_path, num_hashes, num_bands):
    d = tmp_path / "in"; d.mkdir()
    docs = {"a.txt": f"Copyright 2019 Jane Doe. {MIT}", "b.txt": f"Copyright 2024 ACME Inc. {MIT}",
            "c.txt": f"Copyright 2019 Jane Doe. {MIT}", "d.txt": "Completely different words about ducks and geese and swans."}
    for n, t in docs.items(): (d / n).write_text(t)
    res = minhash_dedup([d / n for n in docs], num_hashes, num_bands, 5, 0.8, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "d.txt"]
    assert (tmp_path / "out" / "a.txt").read_text() == docs["a.txt"] and res["kept"] == 2


@pytest.mark.parametrize("kwargs,match", [(dict(num_hashes=100, num_bands=30), "divisible"),
                                          (dict(jaccard_threshold=0.0), r"\(0, 1\]"),
                                          (dict(jaccard_threshold=1.01), r"\(0, 1\]"), (dict(same_dir=True), "input directory"),
                                          (dict(missing=True), "not a readable file")])
def test_minhash_dedup_bad_inputs(tmp_path, kwargs, match):
    (tmp_path / "a.txt").write_text("hello world")
    files = [tmp_path / ("missing.txt" if kwargs.pop("missing", False) else "a.txt")]
    out = tmp_path if kwargs.pop("same_dir", False) else tmp_path / "out"
    args = dict(num_hashes=100, num_bands=20, ngrams=2, jaccard_threshold=0.8) | kwargs
    with pytest.raises((ValueError, FileNotFoundError), match=match): minhash_dedup(files, output_dir=out, **args)


def test_normalization_and_jaccard():
    assert normalize_text("Ça  VA? très—bien!") == "ca va tres bien"
    assert jaccard(word_ngrams("a b c d", 2), word_ngrams("a b c e", 2)) == 0.5


def test_signatures_match_datasketch():
    datasketch = pytest.importorskip("datasketch")
    import mmh3
    perms = minhash_permutations(64, seed=3)
    sets = [{f"w{i}" for i in range(k, k + 40)} for k in (0, 5, 30)]
    ours = minhash_signatures([shingle_hashes(s) for s in sets], perms)
    for s, sig in zip(sets, ours):
        m = datasketch.MinHash(num_perm=64, hashfunc=lambda b: mmh3.hash(b, 0, signed=False), permutations=perms,
                               scheme="legacy")
        m.update_batch([x.encode() for x in s])
        assert np.array_equal(m.hashvalues, sig)


@pytest.mark.parametrize("fast", [False, True])
def test_lsh_matches_s_curve(fast):
    jac = np.array([0.2, 0.5, 0.8])
    pairs = 150
    rates = measured_collision_rates(jac, 60, 12, pairs=pairs, fast=fast)
    assert np.abs(rates - lsh_collision_probability(jac, 5, 12)).max() < 4 * math.sqrt(0.25 / pairs)   # 4 std errors
    with pytest.raises(ValueError, match="divisible"): lsh_candidates(np.zeros((3, 10), np.uint64), 4)


def test_lsh_candidates_exact():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [1, 2, 3, 4], [7, 7, 7, 7], [5, 5, 3, 4]], np.uint64)
    assert lsh_candidates(sig, 2) == {(0, 1), (0, 2), (1, 2), (0, 4), (2, 4)}      # band (1, 2) and band (3, 4)
    assert lsh_candidates(sig.astype(np.uint32), 2) == lsh_candidates(sig, 2)


def test_ngram_hashes_follow_the_shingle_sets():
    docs = [list("abcdef"), [], ["x", "y"], list("abcdefg"), list("abab") * 3]
    hashes, counts = ngram_hashes(docs, 5)
    assert counts.tolist() == [max(len(w) - 4, min(len(w), 1)) for w in docs]
    assert hashes.dtype == np.uint32
    assert np.array_equal(hashes[:2], hashes[3:5])                            # equal n-grams, equal hashes
    assert len(set(hashes.tolist())) == len(set().union(*(ngrams_of_words(w, 5) for w in docs)))
    assert not np.array_equal(ngram_hashes(docs, 5, seed=1)[0], hashes)
    with pytest.raises(ValueError, match=">= 1"): ngram_hashes(docs, 0)


def test_fast_signatures_estimate_jaccard_and_ignore_chunking():
    a, b = [f"w{i}" for i in range(0, 300)], [f"w{i}" for i in range(100, 400)]          # J = 200 / 400
    sig = document_signatures([a, [], b], 256, ngrams=1)
    assert abs((sig[0] == sig[2]).mean() - 0.5) < 4 * math.sqrt(0.25 / 256)
    assert (sig[1] == np.iinfo(np.uint32).max).all()
    h, c = ngram_hashes([a, [], b], 1)
    assert np.array_equal(fast_minhash_signatures(h, c, affine_permutations(256), chunk_rows=5), sig)


@pytest.mark.parametrize("fast", [False, True])
def test_recall_on_known_duplicates(fast):
    docs, family = near_duplicate_corpus(60, 3, 120, edit=0.02, seed=2)
    sh = [word_ngrams(d, 5) for d in docs]
    truth = {(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))
             if family[i] == family[j] and jaccard(sh[i], sh[j]) >= 0.7}
    cand = lsh_candidates(document_signatures([d.split() for d in docs], 128, 5, fast=fast), 16)
    expected = lsh_collision_probability([jaccard(sh[i], sh[j]) for i, j in truth], 8, 16).mean()
    assert abs(len(cand & truth) / len(truth) - expected) < 4 * math.sqrt(0.25 / len(truth))
    roots = near_duplicate_clusters(docs, 128, 16, 5, 0.7, fast=fast)
    assert all(roots[i] == roots[j] for i, j in truth & cand)                   # verified pairs are merged
    assert all(family[r] == family[i] for i, r in enumerate(roots))             # families are never merged


@pytest.mark.parametrize("k", [1, 3, 7])
def test_bloom_filter(k):
    n, m = 3000, 30_000
    b = BloomFilter(m, k); b.add([f"in{i}" for i in range(n)])
    assert b.contains([f"in{i}" for i in range(n)]).all()
    fpr = b.contains([f"out{i}" for i in range(30_000)]).mean()
    assert abs(fpr - bloom_false_positive_rate(m, n, k)) < 0.3 * bloom_false_positive_rate(m, n, k) + 1e-3


# ---------------------------------------------------------------- classifier
def test_stand_ins_without_course_data(monkeypatch, tmp_path):
    monkeypatch.delenv("CS336_DATA", raising=False)
    pages, source = sample_pages()
    assert source.startswith("STAND-IN")
    assert [identify_language(t)[0] for _, t in pages] == ["ja", "ja", "es", "it", "en", "en", "it", "ja", "ru", "zh"]
    with pytest.raises(FileNotFoundError): sample_pages(tmp_path / "missing.txt")     # an explicit path must exist
    (texts, labels), (held, held_labels) = quality_stand_in_data()
    assert set(labels) == {"wiki", "cc"}
    assert labels.count("wiki") == labels.count("cc")
    assert held_labels[-1] == "cc"
    assert not set(held) & set(texts)                                                  # held out: never trained on


def test_classifier_save_load_and_bundled(tmp_path):
    texts = ["the theory of light explains refraction and the speed of waves in media"] * 20 + \
            ["click here buy now cheap login register menu home"] * 20
    clf = QualityClassifier(num_buckets=2**12, dim=4).train(texts, ["wiki"] * 20 + ["cc"] * 20, epochs=5, lr=0.1)
    assert clf.predict(texts[0])[0] == "wiki" and clf.predict(texts[-1])[0] == "cc"
    back = QualityClassifier.load(clf.save(tmp_path / "m.npz"))
    np.testing.assert_allclose(back.predict_proba(texts[:2]), clf.predict_proba(texts[:2]), atol=2e-3)
    label, p = classify_quality("Anarchism is a political theory that is skeptical of the justification of authority. " * 3)
    assert label in ("wiki", "cc") and type(p) is float and 0.5 <= p <= 1
    with pytest.raises(ValueError, match="not among"): clf.train(["x"], ["good"])


def test_pareto_keep_rate():
    kept = pareto_keep(np.full(50_000, 0.5), alpha=9, seed=1).mean()
    assert abs(kept - 1.5 ** -9) < 0.005
    with pytest.raises(ValueError, match=r"\[0, 1\]"): pareto_keep([1.5])


# ---------------------------------------------------------------- pipeline
def _shards(tmp_path):
    d = tmp_path / "shards"; d.mkdir()
    good = ("The committee met on Tuesday to discuss the budget for the coming year. Members agreed that the library "
            "needs more funding. They also asked for a report on the state of the roads. The chair thanked everyone. ") * 3
    for i in range(3):
        docs = [good.replace("Tuesday", f"day {i}"), "buy now click here", good + " Contact me at x@y.org today, please."]
        (d / f"s{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return sorted(d.iterdir())


@pytest.mark.parametrize("engine", ["inline", "dask"])
def test_pipeline_counts_resume_and_failure(tmp_path, engine):
    inputs = _shards(tmp_path)
    stages = [s for s in default_stages() if s.name != "quality"]
    if engine == "dask":
        distributed = pytest.importorskip("distributed")
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
        client = distributed.Client(cluster)
        run = functools.partial(run_pipeline, client=client, progress=False)
    else:
        run, client = functools.partial(run_pipeline, workers=0, progress=False), None
    try:
        rep = run(inputs, tmp_path / "out", stages)
        assert [s["name"] for s in rep.stages] == ["read", "language", "gopher", "c4", "pii"]
        assert rep.stages[0]["docs_in"] == 9 and rep.stages[-1]["docs_out"] == 6
        out = [json.loads(l)["text"] for l in (tmp_path / "out" / "s0.jsonl").read_text().splitlines()]
        assert len(out) == 2 and "|||EMAIL_ADDRESS|||" in out[1] and "x@y.org" not in out[1]
        assert run(inputs, tmp_path / "out", stages).skipped == 3
        boom = [Stage("fail", functools.partial(fail_on, marker="day 1"))] + stages
        with pytest.raises(RuntimeError, match="told to fail"): run(inputs, tmp_path / "out2", boom)
        names = sorted(p.name for p in (tmp_path / "out2").iterdir())
        assert "s1.jsonl" not in names and not any(".tmp-" in n for n in names)
        again = run(inputs, tmp_path / "out2", stages)
        assert (tmp_path / "out2" / "s1.jsonl").read_text() == (tmp_path / "out" / "s1.jsonl").read_text()
        assert again.skipped == sum(n.endswith(".done.json") for n in names)
    finally:
        if client is not None: client.close(); cluster.close()


@pytest.mark.parametrize("kwargs,exc,match", [(dict(workers=-1), ValueError, "workers"),
                                              (dict(same_dir=True), ValueError, "input directory"),
                                              (dict(stages=[len]), TypeError, "Stage")])
def test_pipeline_bad_inputs(tmp_path, kwargs, exc, match):
    inputs = _shards(tmp_path)
    out = inputs[0].parent if kwargs.pop("same_dir", False) else tmp_path / "out"
    with pytest.raises(exc, match=match): run_pipeline(inputs, out, progress=False, **kwargs)
