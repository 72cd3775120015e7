"""MMLU with our harness against lm-evaluation-harness (lm-eval) on the same model: agreement question by question, and questions/s.

lm-eval reads the same local MMLU CSVs through local task definitions (one YAML per subject, `dataset_path: csv`,
written to a temporary folder), with MMLU's usual prompt, `first_n` few-shot examples from dev, and the letters
" A".." D" scored by log-likelihood. Our `cs336_nb.evaluation.evaluate_mmlu` runs on the same model and tokenizer.

Models (built here, nothing downloaded): a random-init `transformers` Llama with a byte-level BPE tokenizer trained in
memory, and, where `TransformerLM.to_hf` exists (Lecture 8), our own random-init `TransformerLM` exported to Hugging
Face (ours scored on our model, lm-eval on its export).

    python benchmarks/bench_eval.py --small                  # CPU, a few subjects (about a minute)
    python benchmarks/bench_eval.py --write-results          # all 57 subjects; writes its section of RESULTS.md

lm-eval is heavy (datasets, pyarrow, pandas, scikit-learn...: about 740 MB installed), so it is not a test
dependency: `pip install "lm-eval==0.4.13" accelerate` first, or `--lm-eval-path DIR` for a `pip install --target DIR`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))
from results import RESULTS, read_block, write_block  # noqa: E402  (benchmarks/results.py)

SECTION = "## Evaluation: our MMLU harness against lm-evaluation-harness (Lecture 10)"


def tiny_hf_tokenizer(text: str, vocab_size: int = 2048):
    "A byte-level BPE tokenizer trained in memory on `text`, as a `transformers` fast tokenizer (EOS = BOS = PAD)."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def tiny_llama(vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               max_len: int = 2048, seed: int = 0):
    "A random-init `transformers` Llama (float32, eval mode)."
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_len,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def write_tasks(folder: Path, subjects: list[str], mmlu_dir: Path) -> list[str]:
    "One lm-eval task YAML per subject, reading our local CSVs; returns the task names."
    names = []
    for s in subjects:
        name = f"cs336_mmlu_{s}"
        spec = {
            "task": name, "dataset_path": "csv",
            "dataset_kwargs": {"data_files": {"validation": str(mmlu_dir / "val" / f"{s}_val.csv"),
                                              "dev": str(mmlu_dir / "dev" / f"{s}_dev.csv")},
                               "column_names": ["question", "A", "B", "C", "D", "answer"],
                               "keep_default_na": False, "na_filter": False},
            "test_split": "validation", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "doc_to_text": "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer.strip())}}",
            "description": f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        (folder / f"{name}.yaml").write_text(json.dumps(spec, indent=1))  # JSON is YAML
        names.append(name)
    return names


def run_lm_eval(model, tokenizer, subjects, mmlu_dir, *, shots, limit, batch_size, max_length, device):
    "lm-eval's predicted letters by subject (in file order) and its wall time."
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    with tempfile.TemporaryDirectory() as d:
        names = write_tasks(Path(d), subjects, mmlu_dir)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, limit=limit, log_samples=True,
                                      task_manager=TaskManager(include_path=d, include_defaults=False),
                                      bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=0)
        secs = time.perf_counter() - t0
    preds = {}
    for s, name in zip(subjects, names):
        samples = sorted(out["samples"][name], key=lambda x: x["doc_id"])
        preds[s] = ["ABCD"[max(range(4), key=lambda i: float(x["filtered_resps"][i][0]))] for x in samples]
    return preds, secs


def run_ours(model, tokenizer, subjects, *, shots, limit, batch_size, max_length):
    "Our predicted letters by subject and our wall time."
    from cs336_nb.evaluation import LMAdapter, evaluate_mmlu
    lm = LMAdapter(model, tokenizer, max_length=max_length)
    t0 = time.perf_counter()
    r = evaluate_mmlu(lm, shots=shots, limit=limit, subjects=subjects, batch_size=batch_size, progress=False)
    secs = time.perf_counter() - t0
    preds, i = {}, 0
    for s in subjects:
        n = r["per_subject"][s]["n"]
        preds[s] = r["predictions"][i:i + n]; i += n
    return preds, secs


def our_exported_model(vocab_size: int, max_len: int):
    "Our random-init TransformerLM and its Hugging Face export (`TransformerLM.to_hf`, Lecture 8), or None where to_hf is missing."
    import torch
    from cs336_nb.model import TransformerLM
    if not hasattr(TransformerLM, "to_hf"): return None
    torch.manual_seed(0)
    ours = TransformerLM(vocab_size, max_len, 64, 2, 4, 128, 10000.0, num_kv_heads=2, attn_backend="sdpa").eval()
    return ours, ours.to_hf().eval()


def compare(label, ours_model, ref_model, tokenizer, subjects, mmlu_dir, a, device):
    "One row: agreement and questions/s of ours (on `ours_model`) and lm-eval (on `ref_model`)."
    ours_model.to(device); ref_model.to(device)
    kw = dict(shots=a.shots, limit=a.limit, batch_size=a.batch_size, max_length=a.max_length)
    run_ours(ours_model, tokenizer, subjects[:1], **{**kw, "limit": 1})             # warm-up
    po, to = run_ours(ours_model, tokenizer, subjects, **kw)
    if a.ours_only:                                     # no lm-eval here: ours on the HF model vs ours on our model
        pr, tr = run_ours(ref_model, tokenizer, subjects, **kw)
    else:
        pr, tr = run_lm_eval(ref_model, tokenizer, subjects, mmlu_dir, device=str(device), **kw)
    n = sum(len(v) for v in po.values())
    agree = sum(x == y for s in subjects for x, y in zip(po[s], pr[s]))
    diff = [(s, i) for s in subjects for i, (x, y) in enumerate(zip(po[s], pr[s])) if x != y]
    from cs336_nb.evaluation import load_mmlu
    gold = {s: [e["answer"] for e in load_mmlu("val", [s], limit=a.limit)] for s in subjects}
    acc = lambda p: sum(x == y for s in subjects for x, y in zip(p[s], gold[s])) / n
    return dict(model=label, subjects=len(subjects), questions=n, agree=agree, differ=diff[:10], ours_acc=acc(po),
                lm_eval_acc=acc(pr), ours_qps=n / to, lm_eval_qps=n / tr, shots=a.shots)


def run_all(a) -> dict:
    import torch
    from cs336_nb.core import describe_device, seed_everything
    from cs336_nb.corpora import corpus_path, load_text
    from cs336_nb.evaluation import mmlu_subjects
    if a.ours_only: lm_eval = None
    else: import lm_eval
    seed_everything(0)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mmlu_dir = corpus_path("mmlu", standin_ok=False)
    subjects = sorted(a.subjects or mmlu_subjects())
    tok = tiny_hf_tokenizer(load_text("tinyshakespeare", max_bytes=300_000), a.vocab_size)
    rows = []
    llama = tiny_llama(len(tok), hidden=a.hidden, max_len=a.max_length)
    if a.ours_only:   # the Llama in transformers against the same weights in our TransformerLM (from_hf)
        from cs336_nb.model import TransformerLM
        rows.append(compare(f"random-init Llama, d={a.hidden}: TransformerLM.from_hf vs transformers, both in our harness",
                            TransformerLM.from_hf(llama).eval(), llama, tok, subjects, mmlu_dir, a, device))
    else:
        rows.append(compare(f"random-init Llama (transformers), d={a.hidden}", llama, llama, tok, subjects, mmlu_dir, a, device))
    pair = our_exported_model(len(tok), a.max_length)
    if pair is not None:
        label = ("our TransformerLM vs its to_hf() export, both in our harness" if a.ours_only
                 else "our TransformerLM, lm-eval on its to_hf() export")
        rows.append(compare(label, *pair, tok, subjects, mmlu_dir, a, device))
    if device.type == "cuda": torch.cuda.synchronize()
    return dict(device=describe_device(device), lm_eval=getattr(lm_eval, "__version__", "?") if lm_eval else None,
                rows=rows, to_hf=pair is not None)


def to_markdown(res: dict) -> str:
    if res["lm_eval"] is None: return to_markdown_ours(res)
    out = [f"MMLU val, {res['rows'][0]['shots']}-shot, log-likelihood of ' A'..' D'; lm-eval {res['lm_eval']} on local "
           f"task YAMLs over the same CSVs. Device: {res['device']}.", "",
           "| device | model | subjects | questions | same prediction | acc ours | acc lm-eval | questions/s ours | questions/s lm-eval | speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {res['device']} | {r['model']} | {r['subjects']} | {r['questions']} | {r['agree']}/{r['questions']} | "
                   f"{r['ours_acc']:.3f} | {r['lm_eval_acc']:.3f} | {r['ours_qps']:.1f} | {r['lm_eval_qps']:.1f} | "
                   f"{r['ours_qps'] / r['lm_eval_qps']:.2f}x |")
    if not res["to_hf"]: out.append("\n(`TransformerLM.to_hf` not available yet: only the Hugging Face Llama row.)")
    return "\n".join(out)


def to_markdown_ours(res: dict) -> str:
    "Rows of an --ours-only run: our harness on each model, the reference column being our harness on the HF model."
    out = [f"MMLU val, {res['rows'][0]['shots']}-shot, our harness only (lm-eval not installed on this machine). Device: {res['device']}.", "",
           "| device | model | subjects | questions | same prediction | acc ours | acc lm-eval | questions/s ours | questions/s lm-eval | speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {res['device']} | {r['model']} | {r['subjects']} | {r['questions']} | "
                   f"{r['agree']}/{r['questions']} | {r['ours_acc']:.3f} | n/a | {r['ours_qps']:.1f} | n/a | n/a |")
    return "\n".join(out)


def write_results(md: str, device: str, path: Path = RESULTS) -> None:
    "Our block of RESULTS.md: rows and notes of other devices kept, this device's replaced."
    old = read_block("bench_eval.py", path)
    keep = [l for l in old.splitlines() if l.startswith("| ") and not l.startswith("| device") and f"| {device} |" not in l]
    lines = md.strip().splitlines()
    head = [l for l in old.splitlines() if l.strip() and not l.startswith("|") and device not in l]   # other devices' notes
    head += [l for l in lines if not l.startswith("|")]
    table = [l for l in lines if l.startswith("|")]
    body = "\n\n".join(l for l in head if l.strip()) + "\n\n" + "\n".join(table[:2] + keep + table[2:])
    write_block("bench_eval.py", body, SECTION, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke size: 3 subjects, 4 questions each, 1 shot")
    p.add_argument("--subjects", nargs="*", default=None, help="MMLU subjects (default: all 57)")
    p.add_argument("--limit", type=int, default=None, help="questions per subject (default: all of val)")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=2048, help="context window of the models (longer prompts are left-truncated)")
    p.add_argument("--hidden", type=int, default=256, help="width of the random Llama")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--device", default=None)
    p.add_argument("--lm-eval-path", default=None, help="a folder from `pip install --target DIR lm-eval` (appended to sys.path)")
    p.add_argument("--ours-only", action="store_true", help="without lm-eval (e.g. on the GPU machine): our harness on both models")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--write-results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.lm_eval_path: sys.path.append(str(Path(a.lm_eval_path).resolve()))
    if a.small:
        a.subjects = a.subjects or ["abstract_algebra", "anatomy", "world_religions"]
        a.limit, a.shots, a.hidden, a.max_length, a.vocab_size = a.limit or 4, 1, 64, 512, 1024
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1"); os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="bench_eval_hf_"))
    res = run_all(a)
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    md = to_markdown(res)
    print(md)
    for r in res["rows"]:
        if r["agree"] != r["questions"]: print(f"DISAGREE {r['model']}: {r['differ']}", file=sys.stderr)
    if a.write_results: write_results(md, res["device"])
    return 0 if all(r["agree"] == r["questions"] for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
