"""machine.py: choices timed on the machine they run on, and the cache that keeps the timings.

The classes this project runs on are simulated by fake timings (a CPU where bf16 is emulated and
slow, one where it is fast, a slow laptop and a fast workstation), so that every class's choice is
tested on every machine; one test restricts the real kernels to AVX2, as an AVX2 laptop has them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import REPO
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import bigram
from scratchgpt import dataloader, machine, optimizers, scoring
from scratchgpt.optimizers import make_optimizers

# A made-up shape table: the larger model ends lower after the same number of steps, the smaller
# one runs more steps in the same time.
TABLE = {
    "cpu": [(800.0, 1.50), (2000.0, 1.46)],
    "cpu-float32": [(1400.0, 1.49), (1800.0, 1.475), (4400.0, 1.45)],
}
CAPS = {"cpu": 2300, "cpu-float32": 5000}
CANDIDATES = [(p, d) for p in TABLE for d in ("bfloat16", "float32")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache of this test's own."""
    path = tmp_path / "cache" / "machine.json"
    monkeypatch.setattr(machine, "cache_path", lambda: path)
    return path


def never_called():
    pytest.fail("a cached timing was measured again")


def choose(monkeypatch, seconds: dict, clock=None, **settings) -> machine.TrainingChoice:
    """choose_training over a 600-second budget with made-up step times: each candidate's step
    'takes' its seconds."""
    monkeypatch.setattr(
        machine, "time_in_turns", lambda steps, spend: {c: seconds[c] for c in steps}
    )
    steps = {c: (lambda: None) for c in seconds}
    names = {c: f"step {c}" for c in seconds}
    timing = {"clock": clock} if clock else {}
    return machine.choose_training(steps, CAPS, 600.0, names, table=TABLE, **timing, **settings)


# The cache


def test_a_measurement_is_kept_for_the_next_run(cache):
    assert machine.remember({"matmul": 12.5}) == cache
    assert machine.read_cache() == {"matmul": 12.5}
    assert machine.cached_number("matmul") == 12.5


def test_another_machine_torch_or_code_version_measures_again(cache, monkeypatch):
    machine.remember({"matmul": 12.5})
    key = machine.machine_key() | {"torch": "0.0"}
    monkeypatch.setattr(machine, "machine_key", lambda: key)
    assert machine.read_cache() == {}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"key": 1}', "\xff\xfe"])
def test_a_damaged_cache_is_measured_again_and_replaced(cache, text):
    cache.parent.mkdir(parents=True)
    cache.write_text(text, encoding="latin-1")
    assert machine.read_cache() == {}
    assert machine.remember({"matmul": 3.0}) == cache
    assert machine.read_cache() == {"matmul": 3.0}


def test_a_cached_value_of_the_wrong_kind_is_not_trusted(cache):
    for value in ("fast", -1.0, True, None):
        machine.remember({"matmul": value})
        assert machine.cached_number("matmul") is None


def test_a_cache_too_big_to_be_ours_is_ignored(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"key": machine.machine_key(), "measured": {"a": 1}}))
    with cache.open("a") as f:
        f.truncate(machine.CACHE_MAX_BYTES + 1)  # sparse: no disk space used
    assert machine.read_cache() == {}


def test_an_unwritable_cache_folder_means_measuring_again_not_an_error(tmp_path, monkeypatch):
    # The tests run as root, for whom a read-only folder is writable: the cache's folder is a
    # regular file instead, which no user can create a folder in.
    blocker = tmp_path / "scratchgpt"
    blocker.write_text("a file where the cache's folder belongs")
    monkeypatch.setattr(machine, "cache_path", lambda: blocker / "machine.json")
    assert machine.remember({"matmul": 3.0}) is None
    assert machine.read_cache() == {}
    assert blocker.read_text() == "a file where the cache's folder belongs"


def test_the_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert machine.cache_path() == tmp_path / "scratchgpt" / "machine.json"


def test_the_key_names_the_kernel_restrictions_and_the_thread_count(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    key = machine.machine_key()
    assert key["ATEN_CPU_CAPABILITY"] == "avx2" and key["threads"] == torch.get_num_threads()
    assert key["torch"] == torch.__version__ and len(key["code"]) == 12


# bf16: native or emulated, by its speed


@pytest.mark.parametrize("bf16_rate, native", [(900.0, True), (1.3, False), (150.0, False)])
def test_bf16_counts_as_native_only_where_it_multiplies_as_fast_as_float32(
    cache, bf16_rate, native
):
    rates = {torch.float32: 160.0, torch.bfloat16: bf16_rate}
    assert machine.bf16_is_native(rates.get) is native
    assert machine.bf16_is_native(lambda dtype: pytest.fail("timed again")) is native  # cached


def test_kernels_restricted_to_avx2_measure_bf16_as_emulated(tmp_path):
    # An AVX2 laptop, simulated: its kernels convert bf16 to float32 in software.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env |= {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    code = "from scratchgpt import machine; print(machine.bf16_is_native())"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.stdout.strip() == "False", result.stderr


# Timing


def test_candidates_are_timed_in_turns():
    calls, clock = [], iter(range(1000))
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    best = machine.time_in_turns(steps, seconds=10, clock=lambda: next(clock))
    assert calls[:6] == ["a", "b", "a", "b", "a", "b"]  # warm-ups, then rounds in turn
    assert best == {"a": 1, "b": 1}  # each call reads the fake clock twice: one tick apart


def test_a_step_is_timed_by_its_typical_round_not_its_luckiest():
    now, durations = [0.0], iter([10.0, 1.0] + [3.0] * (machine.MAX_ROUNDS - 1))

    def step():  # a warm-up of 10 s, one lucky round of 1 s, then 3 s a round
        now[0] += next(durations)

    assert machine.time_in_turns({"a": step}, seconds=1e9, clock=lambda: now[0]) == {"a": 3.0}


def test_quick_steps_stop_after_a_few_rounds():
    calls = []
    machine.time_in_turns({"a": lambda: calls.append(1)}, seconds=1e9)
    assert len(calls) == 1 + machine.MAX_ROUNDS


def test_the_fastest_candidate_is_kept_and_reused(cache):
    best, times, timed = machine.choose_fastest("gen", {"x": lambda: 2.0, "y": lambda: 1.0})
    assert (best, times, timed) == ("y", {"x": 2.0, "y": 1.0}, True)
    again = machine.choose_fastest("gen", {"x": never_called, "y": never_called})
    assert again == ("y", {"x": 2.0, "y": 1.0}, False)


# The shape and precision for a time budget


def test_the_loss_is_interpolated_in_log_steps_and_never_rises_with_more_steps():
    points = [(1000.0, 1.50), (4000.0, 1.46)]
    assert machine.predicted_loss(points, 2000) == pytest.approx(1.48)
    assert machine.predicted_loss(points, 500) == pytest.approx(1.52)
    assert machine.predicted_loss([(1000.0, 1.50), (2000.0, 1.51)], 8000) == pytest.approx(1.50)


def test_runs_of_nearly_the_same_length_are_one_point(tmp_path):
    rows = [{"preset": "p", "steps": s, "loss": x} for s, x in [(1000, 1.5), (1100, 1.4)]]
    rows.append({"preset": "p", "steps": 3000, "loss": 1.3})
    (tmp_path / "t.json").write_text(json.dumps({"runs": rows}))
    (a, loss_a), (b, loss_b) = machine.read_shape_table(tmp_path / "t.json")["p"]
    assert a == pytest.approx((1000 * 1100) ** 0.5) and loss_a == pytest.approx(1.45)
    assert (b, loss_b) == (3000, 1.3)


def test_where_bf16_is_slow_training_runs_in_float32(cache, monkeypatch):
    seconds = {("cpu", "bfloat16"): 0.9, ("cpu", "float32"): 0.6}
    seconds |= {("cpu-float32", "bfloat16"): 0.5, ("cpu-float32", "float32"): 0.25}
    assert choose(monkeypatch, seconds).dtype == "float32"


def test_where_bf16_is_fast_training_runs_in_bf16(cache, monkeypatch):
    seconds = {("cpu", "bfloat16"): 0.3, ("cpu", "float32"): 0.9}
    seconds |= {("cpu-float32", "bfloat16"): 0.14, ("cpu-float32", "float32"): 0.3}
    assert choose(monkeypatch, seconds).dtype == "bfloat16"


def test_a_slow_machine_trains_the_smaller_shape_and_a_fast_one_the_larger(cache, monkeypatch):
    slow = {("cpu", "float32"): 0.75, ("cpu-float32", "float32"): 0.33}  # 800 against 1800 steps
    assert choose(monkeypatch, slow).preset == "cpu-float32"
    cache.unlink()  # another machine
    fast = {("cpu", "float32"): 0.26, ("cpu-float32", "float32"): 0.25}  # 2300 against 2400
    assert choose(monkeypatch, fast).preset == "cpu"


def test_the_measurement_counts_in_the_budget(cache, monkeypatch):
    seconds = {("cpu", "float32"): 0.75, ("cpu-float32", "float32"): 0.33}
    clock = iter([0.0, 30.0])
    choice = choose(monkeypatch, seconds, clock=lambda: next(clock))
    assert choice.measured_for == 30.0
    predicted_steps = (600 - 30) / 0.33
    expected = machine.predicted_loss(TABLE["cpu-float32"], predicted_steps)
    assert choice.predicted["cpu-float32", "float32"] == pytest.approx(expected)


def test_evaluations_count_in_the_steps_a_budget_holds(cache, monkeypatch):
    seconds = {("cpu", "float32"): 0.75, ("cpu-float32", "float32"): 0.33}
    share = machine.evaluation_cost(eval_iters=20, eval_interval=250)  # the CPU presets'
    assert share == pytest.approx(40 / 750)
    choice = choose(monkeypatch, seconds, evaluation_share={"cpu": share, "cpu-float32": share})
    expected = machine.predicted_loss(TABLE["cpu-float32"], 600 / (0.33 * (1 + share)))
    assert choice.predicted["cpu-float32", "float32"] == pytest.approx(expected)


def test_cached_step_times_are_not_measured_again(cache, monkeypatch):
    seconds = {("cpu", "float32"): 0.75, ("cpu-float32", "float32"): 0.33}
    first = choose(monkeypatch, seconds)
    steps = {c: never_called for c in seconds}
    again = machine.choose_training(steps, CAPS, 600.0, {c: f"step {c}" for c in seconds}, TABLE)
    assert (again.preset, again.dtype, again.measured_for) == (first.preset, first.dtype, 0.0)
    assert "timings cached" in again.line()


def test_the_choice_is_one_line_with_every_candidates_figures(cache, monkeypatch):
    seconds = {("cpu", "float32"): 0.75, ("cpu-float32", "float32"): 0.33}
    line = choose(monkeypatch, seconds).line()
    assert "\n" not in line and line.startswith("machine: cpu-float32 in float32")
    assert "cpu float32 1.33 steps/s" in line and "cpu-float32 float32 3.03 steps/s" in line
    assert "--preset and --dtype override" in line


# The committed table


def test_the_committed_table_names_the_source_of_every_run():
    runs = json.loads(machine.SHAPE_TABLE.read_text())["runs"]
    for run in runs:
        assert {
            "preset",
            "steps",
            "loss",
            "machine_class",
            "dtype",
            "commit",
            "date",
            "command",
        } <= set(run)
        assert 1.0 < run["loss"] < 2.0 and run["steps"] > 0
    table = machine.read_shape_table()
    assert set(table) == {"cpu", "cpu-float32"}
    assert all(len(points) >= 2 for points in table.values())  # a slope for each shape


# -----------------------------------------------------------------------------
# Precision: bf16 only where the CPU does it natively. The class of the machine running the tests
# varies, so each test sets the answer of machine.bf16_is_native(): every class's path runs on
# every machine.

CPU = torch.device("cpu")
PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "matmul", "linear"}


class Bf16Ops(TorchDispatchMode):
    """Records the name of every operation that reads or writes a bf16 tensor."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.dtype == torch.bfloat16 for t in tensors):
            self.names.append(func.__name__.split(".")[0])
        return out

    def products(self) -> list[str]:
        return [name for name in self.names if name in PRODUCTS]


def fake_cpu(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(machine, "bf16_is_native", lambda: native)


def modern_run(native: bool, monkeypatch):
    """A tiny modern model with its optimizers and precision, as bigram.py sets them up."""
    fake_cpu(monkeypatch, native)
    arch = bigram.ARCHITECTURES["modern"]
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, dropout=0.1)
    config = bigram.TrainConfig(**shape, **arch)
    torch.manual_seed(0)
    model_config = bigram.GPTConfig(**{**bigram.model_settings(config), "vocab_size": 20})
    model = bigram.GPTLanguageModel(model_config)
    optimizers = make_optimizers(model, config, CPU)
    dtype = machine.resolve_dtype("auto", CPU)
    return model, optimizers, config, dtype


def training_step_ops(native: bool, monkeypatch) -> tuple[Bf16Ops, Bf16Ops]:
    """The bf16 operations of one training step: forward and backward, then the optimizers."""
    model, optimizers, config, dtype = modern_run(native, monkeypatch)
    data = np.random.default_rng(0).integers(0, 20, 2000, dtype=np.uint8)
    x, y = dataloader.get_batch(data, config, torch.Generator().manual_seed(0))
    forward_backward, optimizer = Bf16Ops(), Bf16Ops()
    with forward_backward, machine.autocast(CPU, dtype):
        _, loss = model(x, y)
        loss.backward()
    with optimizer:
        for opt in optimizers:
            opt.step()
    return forward_backward, optimizer


def test_without_bf16_instructions_a_training_step_runs_no_bf16(monkeypatch):
    forward_backward, optimizer = training_step_ops(native=False, monkeypatch=monkeypatch)
    assert forward_backward.names == [] and optimizer.names == []


def test_with_bf16_instructions_training_takes_the_bf16_path(monkeypatch):
    forward_backward, optimizer = training_step_ops(native=True, monkeypatch=monkeypatch)
    assert "mm" in forward_backward.products()  # autocast's matrix products
    assert "baddbmm" in optimizer.products()  # Muon iterates in bf16, its matrices stacked


def test_muon_iterates_in_bf16_only_where_bf16_is_native(monkeypatch):
    _, made, _, _ = modern_run(native=True, monkeypatch=monkeypatch)
    assert type(made[1]) is optimizers.Muon and made[1].ns_dtype == torch.bfloat16
    _, made, _, _ = modern_run(native=False, monkeypatch=monkeypatch)
    assert type(made[1]) is optimizers.Muon and made[1].ns_dtype == torch.float32


def tiny_model(native: bool, monkeypatch, tmp_path) -> torch.nn.Module:
    """The weights MODEL.py generates with by default, on a CPU where bf16 generates faster."""
    model, _, _, _ = modern_run(native, monkeypatch)
    monkeypatch.setattr(machine, "cache_path", lambda: tmp_path / "machine.json")
    bf16_faster = lambda m, batch: 1.0 if next(m.parameters()).dtype == torch.bfloat16 else 2.0
    return machine.generation_weights(model.eval(), "auto", bf16_faster)[0]


def generation_ops(model: torch.nn.Module) -> Bf16Ops:
    """The bf16 operations of generating from a prompt: the prompt's pass, then one-token steps."""
    ops = Bf16Ops()
    with ops:
        for _ in bigram.generate_tokens(model, torch.zeros((1, 3), dtype=torch.long), 4):
            pass
    return ops


def test_without_bf16_instructions_generation_and_evaluation_run_no_bf16(monkeypatch, tmp_path):
    model = tiny_model(native=False, monkeypatch=monkeypatch, tmp_path=tmp_path)
    assert generation_ops(model).names == []
    data = np.random.default_rng(0).integers(0, 20, 200, dtype=np.uint8)
    dtype = machine.resolve_dtype("auto", CPU)
    evaluation = Bf16Ops()
    with evaluation:
        scoring.exhaustive_val_loss(model, data, 16, CPU, dtype)
        with machine.autocast(CPU, dtype):  # the sample printed at each evaluation
            bigram.training_sample(model, [chr(65 + i) for i in range(20)], 5, 0, CPU)
    assert evaluation.names == []


def test_with_bf16_instructions_generation_reads_bf16_weights(monkeypatch, tmp_path):
    model = tiny_model(native=True, monkeypatch=monkeypatch, tmp_path=tmp_path)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert generation_ops(model).products()


# Generation's kernels and the heap

TINY = bigram.GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def test_one_token_steps_switch_onednn_off_and_back_on_for_one_sample_only():
    torch.manual_seed(0)
    model = bigram.GPTLanguageModel(TINY).eval().to(torch.bfloat16)
    assert (
        machine.cache_dtype(model) == torch.float32
    )  # CPU attention reads float32 keys and values
    seen = []  # whether oneDNN was on for each forward pass
    model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
    for batch in (1, 2):
        seen.clear()
        list(bigram.generate_tokens(model, torch.zeros((batch, 3), dtype=torch.long), 4))
        one_token_steps = [True] + [False] * 3 if batch == 1 else [True] * 4
        assert seen == one_token_steps  # the prompt pass keeps oneDNN's matrix products
    assert torch.backends.mkldnn.enabled
    seen.clear()
    list(bigram.generate_tokens(model.float(), torch.zeros((1, 3), dtype=torch.long), 4))
    assert seen == [True] * 4  # float32 weights keep oneDNN


FREE_AND_ALLOCATE = """
import resource, sys, torch
from scratchgpt import machine
if sys.argv[1] == "reuse":
    assert machine.reuse_freed_memory()


def steps(count):  # each step's activations: six blocks of 4 to 16 MB, freed at its end
    for i in range(count):
        kept = [torch.ones((1 + i % 4) << 20) for _ in range(6)]
        del kept


steps(4)  # every size once: the first pages are new either way
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps(16)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_without_new_page_faults():
    def page_faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", FREE_AND_ALLOCATE, mode], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parents[1], check=True,
        )  # fmt: skip
        return int(run.stdout)

    # By default each step faults its pages in anew; reusing the heap, the later steps find
    # theirs already there.
    assert page_faults("reuse") * 4 < page_faults("default")
