"""kernels.py: RMSNorm, relu² and the rotary turn with hand-written derivatives give PyTorch's
own values and gradients; attention runs in float32 under autocast; the fast dropout drops its
share."""

import pytest
import torch
from torch.nn import functional as F

from scratchgpt import kernels


def leaf(*shape: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=generator).requires_grad_()


def grads(fn, *inputs: torch.Tensor) -> list[torch.Tensor]:
    out = fn(*inputs)
    generator = torch.Generator().manual_seed(9)
    out.backward(torch.randn(out.shape, dtype=out.dtype, generator=generator))
    result = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    return result


def test_rms_norm_gradients_are_exact():
    x, weight = leaf(3, 5, 16), leaf(16, seed=1)
    assert torch.autograd.gradcheck(kernels.rms_norm, (x, weight))
    assert torch.autograd.gradcheck(kernels.rms_norm, (x,))  # queries and keys: no gain


def test_rms_norm_matches_torchs_in_float32():
    x, weight = leaf(4, 8, 64, dtype=torch.float32), leaf(64, dtype=torch.float32, seed=1)
    torchs = lambda x, w: F.rms_norm(x, (64,), w)
    assert torch.allclose(kernels.rms_norm(x, weight), torchs(x, weight), atol=1e-6)
    for ours, theirs in zip(
        grads(kernels.rms_norm, x, weight), grads(torchs, x, weight), strict=True
    ):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_rms_norm_under_bf16_autocast_keeps_float32():
    # Queries come out of a bf16 product as a head-major view of a token-major tensor. Torch's
    # norm rounds its float32 result back to bf16; ours keeps it, for float32 attention.
    q = torch.randn(2, 6, 3, 32).to(torch.bfloat16).transpose(1, 2).requires_grad_()
    torchs = lambda t: F.rms_norm(t, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = kernels.rms_norm(q), torchs(q)
        (grad_ours,), (grad_theirs,) = grads(kernels.rms_norm, q), grads(torchs, q)
    assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16
    assert torch.allclose(ours.to(torch.bfloat16), theirs)
    assert grad_ours.dtype == torch.bfloat16
    assert torch.allclose(grad_ours.float(), grad_theirs.float(), rtol=1e-2, atol=1e-2)


def test_rms_norm_module_loads_torchs_state_dict():
    theirs = torch.nn.RMSNorm(8)
    torch.nn.init.normal_(theirs.weight)
    ours = kernels.RMSNorm(8)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_relu_squared_gradient_is_exact_and_torchs():
    x = leaf(4, 32)
    with torch.no_grad():
        x[0, :4] = 0.0  # relu's kink: torch's gradient there is 0, and so is ours
    assert torch.autograd.gradcheck(kernels.relu_squared, (leaf(4, 32),))
    torchs = lambda t: F.relu(t).square()
    assert torch.equal(kernels.relu_squared(x), torchs(x))
    assert torch.equal(grads(kernels.relu_squared, x)[0], grads(torchs, x)[0])


def rotary_angles(length: int, half: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    frequencies = torch.linspace(0.1, 1.0, half, dtype=dtype)
    angles = torch.arange(length, dtype=dtype)[:, None] * frequencies
    return angles.cos(), angles.sin()


def test_rotate_gradient_is_exact():
    cos, sin = rotary_angles(5, 4)
    assert torch.autograd.gradcheck(lambda x: kernels.rotate(x, cos, sin), (leaf(2, 3, 5, 8),))


def test_rotate_turns_pairs_and_keeps_their_length():
    cos, sin = rotary_angles(5, 4, torch.float32)
    x = torch.randn(2, 3, 5, 8)
    x1, x2 = x.chunk(2, dim=-1)
    expected = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    assert torch.allclose(kernels.rotate(x, cos, sin), expected, atol=1e-6)
    pair_length = lambda t: t[..., :4].square() + t[..., 4:].square()
    assert torch.allclose(pair_length(kernels.rotate(x, cos, sin)), pair_length(x), atol=1e-5)


@pytest.mark.parametrize("op", ["rms_norm", "relu_squared", "rotate"])
def test_without_a_gradient_each_op_gives_the_same_values(op):
    cos, sin = rotary_angles(5, 4, torch.float32)
    fn = {"rms_norm": kernels.rms_norm, "relu_squared": kernels.relu_squared,
          "rotate": lambda t: kernels.rotate(t, cos, sin)}[op]  # fmt: skip
    x = torch.randn(2, 3, 5, 8).requires_grad_()
    recorded = fn(x)
    with torch.no_grad():
        plain = fn(x)
    assert recorded.grad_fn is not None and plain.grad_fn is None
    assert torch.allclose(recorded, plain, atol=1e-6)


# Attention in float32 and the fast dropout


def test_cpu_attention_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 8, 16).bfloat16().unbind(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True
    )
    assert y.dtype == torch.bfloat16  # what the next product expects
    torch.testing.assert_close(y, expected.bfloat16(), rtol=0, atol=0)  # rounded once, at the end


def test_gradients_flow_through_float32_attention_in_the_inputs_dtype():
    torch.manual_seed(0)
    q, k, v = (t.requires_grad_() for t in torch.randn(3, 2, 2, 8, 16).bfloat16().unbind(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernels.scaled_dot_product_attention(
            q, k, v, is_causal=True
        ).float().square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0


def test_fast_dropout_drops_the_right_share_and_keeps_the_mean():
    torch.manual_seed(0)
    dropout = kernels.Dropout(0.2)
    x = torch.ones(64, 256, 384)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01  # survivors are scaled by 1 / (1 - p)
    assert not torch.equal(dropout(x), y)  # a fresh mask each call
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 8), (1, 1, 8)])  # a batch; one token of one sample
def test_joined_layers_give_each_layers_output_side_by_side(bias, shape):
    torch.manual_seed(0)
    layers = tuple(torch.nn.Linear(8, 8, bias=bias) for _ in range(3))
    x = torch.randn(shape)
    expected = torch.cat([layer(x) for layer in layers], dim=-1)
    torch.testing.assert_close(kernels.joined_linear(x, layers), expected)
