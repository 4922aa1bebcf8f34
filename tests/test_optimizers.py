"""optimizers.py: our Muon is torch's, with its Newton-Schulz iteration in float32 where bf16 is
emulated (the same step in bf16, the same to bf16's precision in float32, the same state); the
learning-rate schedule."""

import copy

import pytest
import torch

import bigram
from scratchgpt import optimizers


def muon_pair(shape: tuple[int, int], ns_dtype: torch.dtype, nesterov: bool = True):
    """torch's Muon and optimizers.Muon on two copies of the same weights."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(shape)) for _ in range(2)]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    settings = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov)
    ours = optimizers.Muon(copies, ns_dtype=ns_dtype, **settings)
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


def test_wsd_schedule_is_flat_then_falls_in_a_line_to_min_lr():
    config = bigram.TrainConfig(lr=2e-3, min_lr=2e-4, warmup_iters=10, schedule="wsd")
    assert optimizers.lr_scale(0.0, 4, config) == pytest.approx(0.5)  # warming up
    assert optimizers.lr_scale(0.3, 500, config) == 1.0
    assert optimizers.lr_scale(1 - config.decay_share, 500, config) == pytest.approx(1.0)
    halfway_down = 1 - config.decay_share / 2
    assert optimizers.lr_scale(halfway_down, 500, config) == pytest.approx(0.55)
    assert optimizers.lr_scale(1.0, 500, config) == pytest.approx(0.1)
    cosine = bigram.TrainConfig(lr=2e-3, min_lr=2e-4, warmup_iters=10, schedule="cosine")
    assert optimizers.lr_scale(0.5, 500, cosine) == pytest.approx(0.55)


def test_muons_flops_count_each_matrix_by_its_shorter_side():
    wide, tall = torch.nn.Parameter(torch.zeros(4, 8)), torch.nn.Parameter(torch.zeros(8, 4))
    muon = optimizers.Muon([wide, tall], lr=0.02, ns_steps=5)
    per_matrix = 5 * (4 * 4 * 4 * 8 + 2 * 4**3)  # X X^T, the Gram polynomial, its product with X
    assert muon.flops_per_step() == 2 * per_matrix
