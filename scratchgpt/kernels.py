"""The model's operations where PyTorch's own CPU path is slow, called like the standard ones.

Three have their derivatives written out: RMSNorm, relu² and the rotary turn.

Autograd builds each from generic steps (a square, a mean, a product, a concatenation...) and
every step is one more pass over a large tensor, forward and backward. PyTorch has fused kernels
for them on a GPU, not on a CPU, where these passes were a fifth of a training step
(docs/performance.md). Written out by hand, each takes a few passes. The results are the same
as PyTorch's composition to rounding (tests/test_kernels.py checks them with gradcheck).

Three more keep PyTorch's kernels but not its CPU choices: attention runs in float32 (its float32
kernel beats its bf16 one), Dropout draws its random mask four elements to a random word, and
separate matrices that read the same input run as one product (joined_linear).
"""

from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F


class _RMSNorm(torch.autograd.Function):
    """y = x / rms(x) * weight over the last dimension, in float32. Under autocast F.rms_norm
    rounds y back to bf16; this one keeps float32, so queries and keys reach float32 attention
    without a round trip. With x̂ = x / rms(x) and g = dy * weight, the gradient is
    dx = (g - x̂ mean(g x̂)) / rms(x): the part of g along x̂ is removed, since scaling x does not
    change y."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        size = x.shape[-1]
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(size)
        inverse_rms = mean_square.add_(eps).rsqrt_()
        ctx.save_for_backward(x, inverse_rms, weight)
        y = x * inverse_rms
        return y.mul_(weight) if weight is not None else y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: torch.Tensor):
        x, inverse_rms, weight = ctx.saved_tensors
        g = grad * weight if weight is not None else grad
        # mean(g x̂) / rms(x), per row, as a coefficient of x: x̂ = x / rms(x)
        along_x = torch.linalg.vecdot(g, x, dim=-1).unsqueeze(-1)
        along_x.mul_(inverse_rms.pow(3)).div_(-x.shape[-1])
        dx = torch.addcmul(g * inverse_rms, x, along_x)
        dweight = None
        if weight is not None:
            dweight = (grad * x).mul_(inverse_rms).flatten(0, -2).sum(0)
        return dx, dweight, None


def taking_gradient(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an operation on these tensors. When it does not (generation),
    PyTorch's own operation is used: one call beats several small ones on a token's tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """F.rms_norm(x, x.shape[-1:], weight) with its default eps, by hand when training on a CPU."""
    if x.device.type != "cpu" or not taking_gradient(x, weight):
        return F.rms_norm(x, x.shape[-1:], weight)  # on a GPU, a fused kernel
    eps = torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps
    return _RMSNorm.apply(x, weight, eps)


class RMSNorm(nn.Module):
    """nn.RMSNorm (a learned gain, no bias, the same state_dict) through rms_norm above."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight)


class _ReLUSquared(torch.autograd.Function):
    """relu(x)²; its gradient is one product, 2 relu(x) dy. Autograd's own goes through pow,
    which under CPU autocast also copies the MLP's widest tensor to float32 and back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return _ReLUSquared.apply(x) if taking_gradient(x) else F.relu(x).square()


def turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Each pair of channels (x1, x2) = (x[..., i], x[..., i + half]) turned by an angle:
    (x1 cos - x2 sin, x1 sin + x2 cos), written into one new tensor (no concatenation)."""
    x1, x2 = x.chunk(2, dim=-1)
    y = torch.empty_like(x)
    y1, y2 = y.chunk(2, dim=-1)
    torch.mul(x1, cos, out=y1).addcmul_(x2, sin, value=-1)
    torch.mul(x1, sin, out=y2).addcmul_(x2, cos)
    return y


class _Rotate(torch.autograd.Function):
    """turn(x, cos, sin); a turn is undone by the opposite one, so its gradient is the gradient
    turned back: turn(dy, cos, -sin)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return turn(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return turn(grad, cos, -sin), None, None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """turn(x, cos, sin), with its gradient when x needs one."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return _Rotate.apply(x, cos, sin) if taking_gradient(x) else turn(x, cos, sin)


def joined_linear(x: torch.Tensor, layers: tuple[nn.Linear, ...]) -> torch.Tensor:
    """The outputs of layers side by side, as one product: a (C, 3C) product runs near a CPU's
    matmul peak, three (C, C) ones at about half. One token of one sample is a vector's product,
    which reads each weight once either way: there, joining would copy the matrices at every
    generated token, so each layer runs on its own."""
    if x.shape[:-1].numel() == 1:
        return torch.cat([layer(x) for layer in layers], dim=-1)
    bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
    return F.linear(x, torch.cat([layer.weight for layer in layers]), bias)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool
) -> torch.Tensor:
    """F.scaled_dot_product_attention, in float32 on a CPU even under bf16 autocast: PyTorch's
    float32 CPU attention kernel beats its bf16 one, in training and in generation (bench.py)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    # Entering and leaving autocast costs more than one generated token's attention: only if on.
    on = torch.is_autocast_enabled("cpu")
    wide = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64
    with torch.autocast("cpu", enabled=False) if on else nullcontext():
        y = F.scaled_dot_product_attention(q.to(wide), k.to(wide), v.to(wide), is_causal=is_causal)
    return y.to(q.dtype)


class Dropout(nn.Module):
    """nn.Dropout, with the random mask drawn several times faster on a CPU.

    PyTorch's CPU dropout draws one random number per element, which at the reference
    configuration costs about as much as the matrix products. Here each random 64-bit word decides
    four elements: four 15-bit lanes, each compared with p (so p is rounded to 1/32768).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p)  # GPUs have a fast fused kernel
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_()  # 63 random bits
        lanes = words.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF
        keep = lanes >= round(self.p * 32768)
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))  # scaled: the mean stays the same
