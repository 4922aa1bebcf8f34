"""hardware.py: bf16 only where the CPU does it natively, and a Muon that can do without.

The CPU class of the machine running the tests varies (AVX2 only, AVX512_BF16, AMX), so the
answer of hardware.cpu_has_native_bf16() (timed by machine.py) is set by each test that depends
on it: every class's path runs on every machine.
"""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import bigram
from scratchgpt import hardware, machine

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
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)


def modern_run(native: bool, monkeypatch):
    """A tiny modern model with its optimizers and precision, as bigram.py sets them up."""
    fake_cpu(monkeypatch, native)
    arch = bigram.ARCHITECTURES["modern"]
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, dropout=0.1)
    config = bigram.TrainConfig(**shape, **arch)
    torch.manual_seed(0)
    model_config = bigram.GPTConfig(**{**bigram.model_settings(config), "vocab_size": 20})
    model = bigram.GPTLanguageModel(model_config)
    optimizers = bigram.make_optimizers(model, config, CPU)
    dtype = hardware.resolve_dtype("auto", CPU)
    return model, optimizers, config, dtype


def training_step_ops(native: bool, monkeypatch) -> tuple[Bf16Ops, Bf16Ops]:
    """The bf16 operations of one training step: forward and backward, then the optimizers."""
    model, optimizers, config, dtype = modern_run(native, monkeypatch)
    data = np.random.default_rng(0).integers(0, 20, 2000, dtype=np.uint8)
    x, y = bigram.get_batch(data, config, torch.Generator().manual_seed(0))
    forward_backward, optimizer = Bf16Ops(), Bf16Ops()
    with forward_backward, hardware.autocast(CPU, dtype):
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
    _, optimizers, _, _ = modern_run(native=True, monkeypatch=monkeypatch)
    assert type(optimizers[1]) is hardware.Muon and optimizers[1].ns_dtype == torch.bfloat16
    _, optimizers, _, _ = modern_run(native=False, monkeypatch=monkeypatch)
    assert type(optimizers[1]) is hardware.Muon and optimizers[1].ns_dtype == torch.float32


def tiny_model(native: bool, monkeypatch, tmp_path) -> torch.nn.Module:
    """The weights MODEL.py generates with by default, on a CPU where bf16 generates faster."""
    model, _, _, _ = modern_run(native, monkeypatch)
    monkeypatch.setattr(machine, "cache_path", lambda: tmp_path / "machine.json")
    bf16_faster = lambda m, batch: 1.0 if next(m.parameters()).dtype == torch.bfloat16 else 2.0
    return hardware.generation_weights(model.eval(), "auto", bf16_faster)[0]


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
    dtype = hardware.resolve_dtype("auto", CPU)
    evaluation = Bf16Ops()
    with evaluation:
        bigram.exhaustive_val_loss(model, data, 16, CPU, dtype)
        with hardware.autocast(CPU, dtype):  # the sample printed at each evaluation
            bigram.training_sample(model, [chr(65 + i) for i in range(20)], 5, 0, CPU)
    assert evaluation.names == []


def test_with_bf16_instructions_generation_reads_bf16_weights(monkeypatch, tmp_path):
    model = tiny_model(native=True, monkeypatch=monkeypatch, tmp_path=tmp_path)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert generation_ops(model).products()


def muon_pair(shape: tuple[int, int], ns_dtype: torch.dtype, nesterov: bool = True):
    """torch's Muon and hardware.Muon on two copies of the same weights."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(shape)) for _ in range(2)]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    settings = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov)
    ours = hardware.Muon(copies, ns_dtype=ns_dtype, **settings)
    return (weights, torch.optim.Muon(weights, **settings)), (copies, ours)


def step_both(pair, gradients) -> None:
    for weights, optimizer in pair:
        for w, g in zip(weights, gradients, strict=True):
            w.grad = g.clone()
        optimizer.step()


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (24, 24)])
def test_muon_in_bf16_is_torchs_muon_exactly(shape, nesterov):
    # With the same precision the replacement must be torch's step bit for bit: momentum,
    # Nesterov, the wide/tall transpose, weight decay and the learning-rate adjustment.
    pair = muon_pair(shape, torch.bfloat16, nesterov)
    for step in range(3):
        step_both(pair, [torch.randn(shape, generator=torch.Generator().manual_seed(step))] * 2)
    (theirs, _), (ours, _) = pair
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True))


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_in_float32_agrees_with_torchs_to_bf16_precision(nesterov):
    pair = muon_pair((32, 96), torch.float32, nesterov)
    (theirs, _), (ours, _) = pair
    before = theirs[0].detach().clone()
    step_both(pair, [torch.randn(32, 96), torch.randn(32, 96)])
    step_theirs, step_ours = theirs[0].detach() - before, ours[0].detach() - before
    assert (step_ours - step_theirs).norm() < 0.02 * step_theirs.norm()
    buffers = [optimizer.state[w[0]]["momentum_buffer"] for w, optimizer in pair]
    assert torch.allclose(*buffers)  # the iteration leaves the momentum as it found it


def test_muon_state_moves_between_torchs_and_ours():
    # A checkpoint saved on a bf16 machine resumes on an AVX2 laptop, and back.
    (theirs, torch_muon), (ours, our_muon) = muon_pair((8, 8), torch.float32)
    step_both(((theirs, torch_muon), (ours, our_muon)), [torch.randn(8, 8)] * 2)
    our_muon.load_state_dict(copy.deepcopy(torch_muon.state_dict()))
    torch_muon.load_state_dict(copy.deepcopy(our_muon.state_dict()))
    buffer = our_muon.state[ours[0]]["momentum_buffer"]
    assert torch.equal(buffer, torch_muon.state[theirs[0]]["momentum_buffer"])


# The model's CPU paths: float32 attention, the fast dropout, the kernels of one-token steps

TINY = bigram.GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def test_cpu_attention_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 8, 16).bfloat16().unbind(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = hardware.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True
    )
    assert y.dtype == torch.bfloat16  # what the next product expects
    torch.testing.assert_close(y, expected.bfloat16(), rtol=0, atol=0)  # rounded once, at the end


def test_gradients_flow_through_float32_attention_in_the_inputs_dtype():
    torch.manual_seed(0)
    q, k, v = (t.requires_grad_() for t in torch.randn(3, 2, 2, 8, 16).bfloat16().unbind(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hardware.scaled_dot_product_attention(
            q, k, v, is_causal=True
        ).float().square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0


def test_one_token_steps_switch_onednn_off_and_back_on_for_one_sample_only():
    torch.manual_seed(0)
    model = bigram.GPTLanguageModel(TINY).eval().to(torch.bfloat16)
    assert (
        hardware.cache_dtype(model) == torch.float32
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


def test_fast_dropout_drops_the_right_share_and_keeps_the_mean():
    torch.manual_seed(0)
    dropout = hardware.Dropout(0.2)
    x = torch.ones(64, 256, 384)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01  # survivors are scaled by 1 / (1 - p)
    assert not torch.equal(dropout(x), y)  # a fresh mask each call
    assert torch.equal(dropout.eval()(x), x)


FREE_AND_ALLOCATE = """
import resource, sys, torch
from scratchgpt import hardware
if sys.argv[1] == "reuse":
    assert hardware.reuse_freed_memory()


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
