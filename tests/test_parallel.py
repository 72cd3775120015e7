"""Lecture 7 (parallelism): multi-process checks with gloo on the CPU. Every wrapper is trained for several AdamW steps
in 1, 2 and 4 processes and compared with the same steps in one process on the full batch."""
import math
import sys

import pytest
import torch
import torch.distributed as dist

from cs336_nb.model import ModelConfig
from cs336_nb.parallel import (DDP, FSDP, ShardedOptimizer, WorkerError, activation_bytes_per_layer, bus_bandwidth,
                               collectives_demo, fail_on_rank, launch, pipeline_bubble_fraction, pipeline_check,
                               pipeline_schedule, ring_bytes_per_rank, simulate_schedule, tensor_parallel_check,
                               training_bytes_per_param, zero_bubble_h1_bubble_fraction, zero_bubble_h1_schedule,
                               zero_memory_per_gpu)
from cs336_nb.testing import ToyNet, build_check_model, train_compare, train_compare_many

WRAPPERS = ["ddp", "ddp_bucketed", "naive", "zero", "fsdp"]
TINY = ModelConfig.tiny(num_layers=4, d_model=32, num_heads=2, d_ff=48, vocab_size=61, context_length=16)
_cache = {}


def _toy_results(ws):
    if ws not in _cache: _cache[ws] = launch(train_compare_many, ws, WRAPPERS, "toy", steps=4, batch_size=8)
    return _cache[ws]


# ---------------------------------------------------------------- accounting
def test_bytes_per_param_and_zero_paper_example():
    assert training_bytes_per_param() == 16
    psi, n = 7.5e9, 64  # ZeRO paper, Figure 1: 120 GB -> 31.4 / 16.6 / 1.9 GB
    got = [zero_memory_per_gpu(psi, n, s) / 1e9 for s in range(4)]
    assert [round(g, 1) for g in got] == [120.0, 31.4, 16.6, 1.9]
    assert zero_memory_per_gpu(psi, 1, 3) == zero_memory_per_gpu(psi, 1, 0)  # one GPU: nothing to shard
    with pytest.raises(ValueError, match="stage"): zero_memory_per_gpu(psi, n, 4)
    with pytest.raises(ValueError, match="num_gpus"): zero_memory_per_gpu(psi, 0, 1)


def test_bubble_and_activation_formulas():
    assert pipeline_bubble_fraction(1, 8) == 0.0
    assert math.isclose(pipeline_bubble_fraction(4, 4), 3 / 7)
    s, b, h, a, t = 2048, 1, 12288, 96, 8  # GPT-3 175B shape (Korthikanti et al.)
    sbh = s * b * h
    assert activation_bytes_per_layer(s, b, h, a) == sbh * (34 + 5 * a * s / h)
    assert activation_bytes_per_layer(s, b, h, a, tensor_parallel=t) == sbh * (10 + 24 / t + 5 * a * s / (h * t))
    assert activation_bytes_per_layer(s, b, h, a, tensor_parallel=t, sequence_parallel=True) == sbh * (34 / t + 5 * a * s / (h * t))
    assert activation_bytes_per_layer(s, b, h, a, tensor_parallel=t, sequence_parallel=True, recompute="selective") == sbh * 34 / t
    assert activation_bytes_per_layer(s, b, h, a, recompute="full") == 2 * sbh
    with pytest.raises(ValueError, match="recompute"): activation_bytes_per_layer(s, b, h, a, recompute="some")


def test_ring_volume_and_bus_bandwidth():
    assert ring_bytes_per_rank("all_reduce", 1000, 4) == 1500
    assert ring_bytes_per_rank("all_gather", 1000, 4) == ring_bytes_per_rank("reduce_scatter", 1000, 4) == 750
    algbw, busbw = bus_bandwidth("all_reduce", 1e9, 0.01, 8)
    assert algbw == 1e11 and math.isclose(busbw, 1e11 * 2 * 7 / 8)
    with pytest.raises(ValueError, match="op"): ring_bytes_per_rank("all_to_all", 1, 2)


@pytest.mark.parametrize("p,m", [(2, 1), (2, 4), (4, 4), (4, 8), (3, 5)])
@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
def test_schedules_bubble_and_memory(p, m, kind):
    sched = pipeline_schedule(p, m, kind)
    for ops in sched:  # every micro-batch forwarded and backpropagated once, forward first
        assert sorted(ops) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
        assert all(ops.index(("F", i)) < ops.index(("B", i)) for i in range(m))
    sim = simulate_schedule(sched, 1.0, 2.0)
    assert math.isclose(sim["bubble"], pipeline_bubble_fraction(p, m))
    assert math.isclose(sim["makespan"], (m + p - 1) * 3.0)
    expect = [m] * p if kind == "gpipe" else [min(m, p - s) for s in range(p)]
    assert sim["peak_in_flight"] == expect


@pytest.mark.parametrize("p,m", [(2, 1), (2, 4), (4, 4), (4, 8), (3, 5), (8, 16)])
def test_zero_bubble_schedule(p, m):
    sched = pipeline_schedule(p, m, "zb-h1")
    assert sched == zero_bubble_h1_schedule(p, m)
    for ops in sched:  # every micro-batch once through F, B (input grad) and W (weight grad), in that order
        assert sorted(ops) == sorted((op, i) for op in "FBW" for i in range(m))
        assert all(ops.index(("F", i)) < ops.index(("B", i)) < ops.index(("W", i)) for i in range(m))
    sim = simulate_schedule(sched, 1.0, 2.0, 1.0)
    one_f_one_b = simulate_schedule(pipeline_schedule(p, m, "1f1b"), 1.0, 2.0)
    assert max(sim["peak_in_flight"]) <= max(one_f_one_b["peak_in_flight"])
    assert sim["bubble"] <= one_f_one_b["bubble"]
    if m >= p:  # the paper's steady-state formula: a third of 1F1B's idle time when F, B and W take as long
        assert math.isclose(sim["bubble"], zero_bubble_h1_bubble_fraction(p, m))
        assert math.isclose(sim["makespan"], 3.0 * m + (p - 1))


@pytest.mark.parametrize("times", [(2.0, 2.0, 1.0), (1.0, 1.2, 0.8)])
def test_zero_bubble_formula_unequal_times(times):
    p, m = 4, 8
    sim = simulate_schedule(zero_bubble_h1_schedule(p, m), times[0], times[1] + times[2], times[2])
    assert math.isclose(sim["bubble"], zero_bubble_h1_bubble_fraction(p, m, *times))


# ---------------------------------------------------------------- launcher and collectives
def test_launch_collectives_and_errors():
    res = launch(collectives_demo, 2)
    x0, x1 = res[0]["input"], res[1]["input"]
    for r in range(2):
        assert torch.equal(res[r]["broadcast"], x0)
        assert torch.equal(res[r]["all_reduce"], x0 + x1)
        assert torch.equal(res[r]["reduce_scatter+all_gather"], x0 + x1)
        assert torch.equal(res[r]["reduce_scatter"], (x0 + x1).chunk(2)[r])
        assert torch.equal(res[r]["all_gather"], torch.stack([x0, x1]))
    assert torch.equal(res[0]["gather"], torch.stack([x0, x1])) and res[1]["gather"] is None
    assert torch.equal(res[0]["reduce"], x0 + x1)
    with pytest.raises(WorkerError, match="rank 1 was told to fail") as e:
        launch(fail_on_rank, 2, 1, timeout=60)
    assert e.value.rank == 1 and "Traceback" in e.value.worker_traceback
    with pytest.raises(ValueError, match="world_size"): launch(collectives_demo, 0)
    with pytest.raises(ValueError, match="backend"): launch(collectives_demo, 1, backend="mpi")
    with pytest.raises(TypeError, match="fn"): launch(42, 1)


# ---------------------------------------------------------------- data parallel wrappers vs one process
@pytest.mark.parametrize("ws", [1, 2, 4])
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_wrapper_matches_single_process(ws, wrapper):
    res = _toy_results(ws)
    for r in range(ws):
        out = res[r][wrapper]
        assert out["max_diff"] < 1e-5, (wrapper, ws, out["diffs"])
        assert out["losses"] == pytest.approx(out["ref_losses"], abs=1e-5)
        assert "unused" in out["names"] and out["diffs"]["unused"] == 0.0  # never got a gradient: untouched
        assert "frozen.weight" not in out["names"] or out["diffs"]["frozen.weight"] == 0.0
    assert res[0][wrapper]["losses"][-1] < res[0][wrapper]["losses"][0]  # it did train


@pytest.mark.parametrize("ws", [2, 4])
def test_sharded_optimizer_state_is_split(ws):
    res = _toy_results(ws)
    full = res[0]["zero"]["ref_optimizer_state_bytes"]
    parts = [res[r]["zero"]["optimizer_state_bytes"] for r in range(ws)]
    assert sum(parts) == full and max(parts) < full


def test_wrappers_on_transformer():
    res = launch(train_compare_many, 2, ["ddp_bucketed", "zero", "fsdp"], TINY, steps=3, batch_size=4, seq_len=12)
    for r in range(2):
        for w, out in res[r].items():
            assert out["max_diff"] < 1e-4, (w, out["diffs"])
            assert out["losses"] == pytest.approx(out["ref_losses"], abs=1e-4)


def _fsdp_low_precision_and_units(rank, ws):
    out = train_compare(rank, ws, "fsdp", TINY, steps=3, batch_size=4, seq_len=12, compute_dtype=torch.bfloat16)
    m = FSDP(build_check_model(TINY))
    out["units"] = m.units
    out["shard_dtypes"] = {s.dtype for s in m.parameters()}
    out["shard_numel"] = sum(s.numel() for s in m.parameters())
    return out


def test_fsdp_bf16_compute_fp32_master():
    res = launch(_fsdp_low_precision_and_units, 2)
    n_layers, full = TINY.num_layers, TINY.num_params()
    for r in range(2):
        out = res[r]
        assert out["shard_dtypes"] == {torch.float32}  # master weights stay fp32
        assert len(out["units"]) == n_layers + 1  # one unit per block + the root unit
        assert full / 2 <= out["shard_numel"] <= full / 2 + 2 * 64  # half of every parameter (+ padding)
        assert out["losses"] == pytest.approx(out["ref_losses"], rel=2e-2)  # bf16 compute: close, not equal
        assert out["max_diff"] < 5e-2


# ---------------------------------------------------------------- tensor and pipeline parallelism
def _wrapped_models_are_freed():
    "A wrapper must not keep its model alive once the user drops it (hooks on parameters live in C++, out of gc's sight)."
    import gc
    import weakref
    out = {}
    for kind in ("ddp", "ddp_bucketed", "fsdp"):
        model = ToyNet(); ref = weakref.ref(model)
        m = FSDP(model) if kind == "fsdp" else DDP(model, bucket_size_mb=1e-4 if kind == "ddp_bucketed" else None)
        m(torch.randn(4, 5)).sum().backward(); m.finish_gradient_synchronization()
        del m, model; gc.collect()
        out[kind] = ref() is None
    return out


def _tp_and_pp(rank, ws):
    return dict(tp=tensor_parallel_check(rank, ws, TINY), gpipe=pipeline_check(rank, ws, TINY, kind="gpipe"),
                onef=pipeline_check(rank, ws, TINY, kind="1f1b", num_microbatches=2, batch_size=4),
                zb=pipeline_check(rank, ws, TINY, kind="zb-h1", num_microbatches=4, batch_size=4),
                freed=_wrapped_models_are_freed())


def test_tensor_and_pipeline_parallel_match_one_device():
    res = launch(_tp_and_pp, 2)
    for r in range(2):
        tp = res[r]["tp"]
        assert tp["logits_diff"] < 1e-5 and tp["loss_diff"] < 1e-5 and tp["grad_diff"] < 1e-6
        assert tp["mlp_params_this_rank"] * 2 == tp["mlp_params_full"]
        for k in ("gpipe", "onef", "zb"):
            assert res[r][k]["grad_diff"] < 1e-6
    assert res[1]["gpipe"]["loss"] == pytest.approx(res[1]["gpipe"]["ref_loss"], abs=1e-6)
    assert res[0]["gpipe"]["loss"] is None
    assert [op for op, *_ in res[0]["onef"]["timeline"]] == ["F", "F", "B", "B"]
    assert res[1]["zb"]["loss"] == pytest.approx(res[1]["zb"]["ref_loss"], abs=1e-6)
    for r in range(2):
        assert [(op, i) for op, i, *_ in res[r]["zb"]["timeline"]] == zero_bubble_h1_schedule(2, 4)[r]
    assert res[0]["freed"] == {"ddp": True, "ddp_bucketed": True, "fsdp": True}


def test_pipeline_four_stages():
    res = launch(pipeline_check, 4, TINY, kind="1f1b", num_microbatches=4, batch_size=4)
    assert all(r["grad_diff"] < 1e-6 for r in res)
    assert res[3]["loss"] == pytest.approx(res[3]["ref_loss"], abs=1e-6)


# ---------------------------------------------------------------- the package: one module per part of the lecture
def test_package_reexports_every_part():
    "`cs336_nb.parallel` re-exports every public name of its parts (also in `__all__`); workers keep their real module."
    import cs336_nb.parallel as P
    from cs336_nb.parallel import bench, collectives, data_parallel, fsdp, launcher, memory, tensor_pipeline
    for mod in (launcher, collectives, memory, data_parallel, fsdp, tensor_pipeline, bench):
        assert set(mod.__all__) <= set(P.__all__), (mod.__name__, set(mod.__all__) - set(P.__all__))
        for name in mod.__all__: assert getattr(P, name) is getattr(mod, name), name
    assert len(P.__all__) == len(set(P.__all__))
    assert train_compare_many.__module__ == "cs336_nb.testing"  # spawned workers import it from there
    for name in ("ModelSpec", "ToyNet", "WrapperName", "build_check_model", "loss_of", "make_batch", "train_compare",
                 "train_compare_many"):
        assert not hasattr(P, name), name  # test scaffolding is not re-exported by the lecture's face
    assert P.bench_all.__module__ == "cs336_nb.parallel.bench"
    assert P.launch.__module__ == "cs336_nb.parallel.launcher"
    assert P.measure_collective.__module__ == "cs336_nb.parallel.collectives"
    assert launcher._importable_worker().__module__ == "cs336_nb.parallel.launcher"


# ---------------------------------------------------------------- argument checks (no process group needed)
def test_bad_arguments():
    with pytest.raises(ValueError, match="bucket_size_mb"): DDP(torch.nn.Linear(2, 2), bucket_size_mb=0)
    with pytest.raises(TypeError, match="module"): DDP("not a module")
    with pytest.raises(TypeError, match="compute_dtype"): FSDP(torch.nn.Linear(2, 2), compute_dtype=torch.int32)
    with pytest.raises(TypeError, match="optimizer_cls"): ShardedOptimizer(torch.nn.Linear(2, 2).parameters(), object)
    with pytest.raises(ValueError, match="kind"): pipeline_schedule(2, 2, "zb")


# ---------------------------------------------------------------- benchmarks/bench_parallel.py --trace-fsdp, on the CPU
def _bench_parallel():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_parallel.py"
    spec = importlib.util.spec_from_file_location("bench_parallel", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_parallel"] = mod  # by name, so that spawned workers can unpickle its functions
    spec.loader.exec_module(mod)
    return mod


def test_trace_fsdp_memory_categories():
    bp = _bench_parallel()
    cfg = ModelConfig.tiny(num_layers=2, d_model=32, num_heads=2, d_ff=48, vocab_size=61, context_length=16)
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        rows = bp.trace_fsdp_memory(0, 1, cfg, order=("fsdp",), collect=True, batch_size=2, seq_len=8, steps=1)
    finally:
        dist.destroy_process_group()
    n_params = sum(p.numel() for p in build_check_model(cfg).parameters())
    for r in rows:
        assert r["grads"] == 0  # zero_grad(set_to_none=True) before measuring
        assert r["optimizer_state"] == 2 * r["params"]  # AdamW: exp_avg and exp_avg_sq
        assert r["params"] >= 4 * n_params  # fp32 master weights (ours pads each parameter to the world size)
    assert [r["mode"] for r in rows] == ["fsdp"]  # FSDP2 (slow to import) is exercised by `--trace-fsdp --smoke`


def test_trace_fp16_split_rounding_on_cpu():
    res = _bench_parallel().fp16_split_rounding("cpu", steps=2)
    assert res["split_vs_full"] < 1e-4  # on the CPU the two half batches round like the full one
    assert res["ours_one_process_vs_full"] < 1e-4
    assert set(res["split_by_param"]) >= {"linear1.weight", "head.weight"}


def test_trace_fp16_two_ranks_on_cpu():
    bp = _bench_parallel()
    res = launch(bp.fp16_two_ranks, 2, device="cpu", timeout=120)[0]
    assert res["two_ranks_vs_full"] < 1e-4  # two processes (communication included) round like one
    assert res["device"] == "cpu, 2 ranks over gloo"
    assert set(res["by_param"]) >= {"linear1.weight", "head.weight"}
