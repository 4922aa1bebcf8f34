"""ScratchGPT: a character-level GPT, written from scratch, and the script that trains it.

    python bigram.py                      # Tiny Shakespeare, preset picked for this machine
    python bigram.py --preset gpu         # the reference run: 6 layers, 6 heads, 384 channels
    python bigram.py --model bigram       # the bigram baseline this repository is named after

Importing this file has no side effects: MODEL.py imports the model and the checkpoint loader.
"""

import argparse
import gc
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import corpus
import files
import hardware
import plots
from corpus import split_corpus
from files import UserError
from hardware import autocast, resolve_device, resolve_dtype

# -----------------------------------------------------------------------------
# Hyperparameters. Two architectures: `classic` is the 2019 recipe of the original (GPT-2's
# model, AdamW, cosine schedule); `modern` adds what the field learned since, each piece kept
# because it measured better here (README, "What each piece buys").
ARCHITECTURES = {
    "classic": dict(rope=False, norm="layer", qk_norm=False, mlp="gelu", bias=True,
                    split_qkv=False, optimizer="adamw", schedule="cosine"),
    "modern": dict(rope=True, norm="rms", qk_norm=True, mlp="relu2", bias=False,
                   split_qkv=True, optimizer="muon", schedule="wsd"),
}  # fmt: skip
# `gpu` is the reference run. The CPU presets train for ten minutes (max_iters is a cap), each
# shape chosen by measurement for the best validation loss in that time on 2 cores: `cpu` for CPUs
# with bf16 instructions, `cpu-float32` for the others (most laptops), which do a third of the
# arithmetic in that time: a narrower, deeper model (docs/cpu-classes.md).
PRESETS = {
    "gpu": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
        max_iters=5000, eval_interval=250, eval_iters=200,
        lr=1e-3, min_lr=1e-4, warmup_iters=100, weight_decay=0.1, grad_clip=1.0,
        **ARCHITECTURES["classic"],
    ),
    "cpu": dict(
        n_layer=4, n_head=4, n_embd=256, block_size=128, batch_size=32, dropout=0.1,
        max_iters=2300, max_minutes=10, eval_interval=250, eval_iters=20,
        lr=2e-3, min_lr=2e-4, warmup_iters=100, weight_decay=0.1, grad_clip=1.0,
        **ARCHITECTURES["modern"],
    ),
    "cpu-float32": dict(
        n_layer=6, n_head=4, n_embd=128, block_size=128, batch_size=32, dropout=0.1,
        max_iters=5000, max_minutes=10, eval_interval=250, eval_iters=20,
        lr=2e-3, min_lr=2e-4, warmup_iters=100, weight_decay=0.1, grad_clip=1.0,
        **ARCHITECTURES["modern"],
    ),
}  # fmt: skip
ADAM_BETAS = (0.9, 0.99)  # beta2 0.99 rather than 0.999: small batches, few iterations
MUON_MOMENTUM = 0.95
WSD_DECAY_SHARE = 0.45  # warmup-stable-decay: the learning rate falls over the last 45% of the run
# The repository's own folders, wherever the script is run from.
DATA_DIR = Path(__file__).resolve().parent / "data"
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
CACHE_DIR = DATA_DIR / "cache"  # token files built from archives
DATASET_FILES = {"shakespeare": DATA_DIR / "input.txt", "reddit": DATA_DIR / "reddit.rar"}


# -----------------------------------------------------------------------------
# The model


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


NORMS = ("layer", "rms")
ACTIVATIONS = {"gelu": F.gelu, "relu2": relu_squared}


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256  # longest context the model sees
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = True  # biases in Linear and LayerNorm, as in the original (10.8M parameters)
    # The switches of the modern recipe (ARCHITECTURES below); their defaults are the 2019 model.
    rope: bool = False  # rotary positions in attention instead of a learned position table
    norm: str = "layer"  # "layer" (LayerNorm) or "rms" (RMSNorm: no mean to remove, no bias)
    qk_norm: bool = False  # queries and keys RMS-normed per head, so attention logits stay tame
    mlp: str = "gelu"  # the MLP's activation: "gelu" or "relu2" (ReLU squared)
    split_qkv: bool = False  # queries, keys and values from three matrices, not one (for Muon)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise UserError("rotary positions need an even head size (n_embd / n_head)")
        for name, choices in (("norm", NORMS), ("mlp", ACTIVATIONS)):
            if getattr(self, name) not in choices:
                known = ", ".join(choices)
                raise UserError(f"{name} must be one of {known}, got {getattr(self, name)!r}")


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    With it, each new token costs one position of work instead of a pass over the whole context.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype: torch.dtype):
        head_dim = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, head_dim)
        # One (keys, values) pair of buffers per layer, filled position by position.
        self.layers = [
            (
                torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(shape, device=device, dtype=dtype),
            )
            for _ in range(config.n_layer)
        ]
        self.length = 0  # positions filled so far
        self.capacity = config.block_size


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


ROPE_BASE = 10000.0  # the longest wavelength of the rotary positions, in characters


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rms":
        return nn.RMSNorm(config.n_embd)  # a learned gain only
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def rotary(start: int, length: int, head_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_size / 2) of the rotation angles of positions start, start + 1, ...

    Angles are computed in float64: positions past a million stay exact, so a rolling KV cache can
    run on for as long as generation does."""
    freqs = ROPE_BASE ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.arange(start, start + length, dtype=torch.float64)[:, None] * freqs
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn each pair of channels (i, i + head_size / 2) of x (B, n_head, T, head_size) by its
    position's angle. A query at p and a key at q then meet at an angle that depends on p - q
    only: attention sees how far back a character is, not where it sits in the window."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Scaled dot-product attention of q over k and v, each (B, n_head, T, head_size).

    A prompt starts at position 0 and needs the causal mask; one new token sees all the cache.
    No dropout on the attention weights: SDPA's fused CPU kernel has none, so asking for it falls
    back to the math path (the whole T x T matrix and a random mask as big), which halves training
    speed on a CPU. The residual and embedding dropouts still regularise.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    # On a CPU, PyTorch's float32 attention kernel beats its bf16 one (forward and backward of
    # the cpu preset's attention: 1.6x; one generated token: 4x), so attention leaves autocast.
    # (Entering and leaving autocast costs more than one generated token's attention: only if on.)
    on = torch.is_autocast_enabled("cpu")
    wide = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64
    with torch.autocast("cpu", enabled=False) if on else nullcontext():
        y = F.scaled_dot_product_attention(q.to(wide), k.to(wide), v.to(wide), is_causal=causal)
    return y.to(q.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qk_norm = config.qk_norm
        self.split_qkv = config.split_qkv
        if config.split_qkv:  # three matrices: Muon orthogonalises each update on its own
            self.q, self.k, self.v = (
                nn.Linear(config.n_embd, config.n_embd, bias=config.bias) for _ in range(3)
            )
        else:  # one matrix computes queries, keys and values of all heads at once
            self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x, cache=None, start: int = 0, rope=None):
        B, T, C = x.shape
        # SDPA's causal mask is aligned top-left, so a multi-token step must start an empty cache.
        assert T == 1 or start == 0, "multi-token steps must start an empty cache"
        head_size = C // self.n_head
        # queries, keys and values as (B, n_head, T, head_size) each
        if self.split_qkv:  # three (B, T, C) -> (B, T, n_head, head_size) -> (B, n_head, T, ...)
            q, k, v = (
                f(x).view(B, T, self.n_head, head_size).transpose(1, 2)
                for f in (self.q, self.k, self.v)
            )
        else:  # one (B, T, 3 * C) -> (B, T, 3, n_head, head_size) -> (3, B, n_head, T, ...)
            q, k, v = self.qkv(x).view(B, T, 3, self.n_head, head_size).permute(2, 0, 3, 1, 4)
        if self.qk_norm:  # unit-RMS queries and keys: no logit can grow without bound
            q, k = F.rms_norm(q, q.shape[-1:]), F.rms_norm(k, k.shape[-1:])
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            # Store this step's keys/values, then attend over everything cached so far. Slots are
            # reused in a ring: past the window only rotary positions get here (see forward).
            cache_k, cache_v = cache
            slot, filled = start % cache_k.shape[2], min(start + T, cache_k.shape[2])
            cache_k[:, :, slot : slot + T] = k
            cache_v[:, :, slot : slot + T] = v
            k, v = cache_k[:, :, :filled], cache_v[:, :, :filled]
        y = attend(q, k, v, causal=T > 1)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.activation = ACTIVATIONS[config.mlp]
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(self.activation(self.fc(x))))


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each on a pre-normed residual branch."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, start: int = 0, rope=None):
        x = x + self.attn(self.ln1(x), cache, start, rope)
        return x + self.mlp(self.ln2(x))


class GPTLanguageModel(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        head_size = config.n_embd // config.n_head
        if config.rope:  # positions live inside attention: the window's angles, computed once
            cos, sin = rotary(0, config.block_size, head_size, "cpu")
            self.register_buffer("rope_cos", cos, persistent=False)  # not in the checkpoint
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.apply(self._init_weights)
        # Residual projections add up over 2 * n_layer branches: scale them down (GPT-2).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        """Logits for every position of idx (B, T); the loss too when targets are given.

        With a kv_cache, idx continues the cached tokens: positions start at kv_cache.length.
        With rotary positions, a cache can go on past block_size one token at a time: it keeps
        the last block_size keys and values, so every new character sees a full window.
        """
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        rolling = self.config.rope and kv_cache is not None and T == 1
        if start + T > self.config.block_size and not rolling:
            raise ValueError(f"{start + T} positions exceed block_size {self.config.block_size}")
        x = self.token_embedding(idx)
        rope = None
        if self.config.rope and start + T <= self.config.block_size:
            rope = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        elif self.config.rope:  # a rolling cache, past the window
            rope = rotary(start, T, self.config.n_embd // self.config.n_head, idx.device)
        else:  # a slice of the table: no index tensor to build
            x = x + self.position_embedding.weight[start : start + T]
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            cache = kv_cache.layers[i] if kv_cache is not None else None
            x = block(x, cache, start, rope)
        if kv_cache is not None:
            kv_cache.length += T
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


class BigramLanguageModel(nn.Module):
    """The baseline: the next character depends on the current one only, via a lookup table."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.logits_table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.normal_(self.logits_table.weight, std=0.02)  # start near uniform: loss ln(vocab)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        logits = self.logits_table(idx)
        if kv_cache is not None:
            kv_cache.length += idx.shape[1]  # nothing to remember: only positions advance
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


MODEL_TYPES = {"gpt": GPTLanguageModel, "bigram": BigramLanguageModel}


def build_model(model_type: str, config: GPTConfig) -> nn.Module:
    return MODEL_TYPES[model_type](config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -----------------------------------------------------------------------------
# Generation


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of logits (B, V); temperature 0 means always the likeliest."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of tokens whose probabilities add up to top_p (nucleus sampling).
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # the best always stays
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)


@torch.inference_mode()
def generate_tokens(
    model: nn.Module,
    prompt: torch.Tensor,
    num_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_kv_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield num_tokens new tokens, one (B, 1) tensor per step, continuing prompt (B, T).

    With the KV cache, each step feeds one token. With rotary positions the cache rolls: past
    block_size it keeps the latest block_size keys and values. Otherwise positions are absolute,
    so a full cache (block_size positions) is rebuilt from the most recent block_size // 2 tokens
    in one pass: the context slides in jumps of half a window, not a re-read per token.
    """
    block_size = model.config.block_size
    rolling = model.config.rope
    context = prompt
    cache = None
    for _ in range(num_tokens):
        if not use_kv_cache:
            logits, _ = model(context[:, -block_size:])
        elif cache is None or (cache.length == cache.capacity and not rolling):
            keep = block_size if cache is None else max(1, block_size // 2)
            cache = KVCache(model.config, context.shape[0], context.device, cache_dtype(model))
            logits, _ = model(context[:, -keep:], kv_cache=cache)
        else:
            with matrix_vector_kernels(model, context):
                logits, _ = model(context[:, -1:], kv_cache=cache)
        next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        context = torch.cat([context, next_token], dim=1)
        if context.shape[1] > 2 * block_size:  # only the last window is ever read again
            context = context[:, -block_size:]
        yield next_token


@torch.no_grad()
def training_sample(model: nn.Module, vocab: list[str], num_chars: int, seed: int, device) -> str:
    """What the model writes now: a continuation of a newline at temperature 0.8, with the same
    seed at every evaluation, so that the samples of one run show what changed."""
    start = vocab.index("\n") if "\n" in vocab else 0
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.tensor([[start]], device=device)
    model.eval()
    steps = generate_tokens(model, prompt, num_chars, temperature=0.8, generator=generator)
    text = corpus.decode([step.item() for step in steps], vocab)
    model.train()
    return text


def matrix_vector_kernels(model: nn.Module, context: torch.Tensor) -> AbstractContextManager:
    """For one new token of one sample, every product is a matrix times a vector. For bf16 weights
    PyTorch's own kernel reads them about twice as fast as oneDNN's, which PyTorch prefers on a
    CPU: oneDNN is switched off for these steps only. Longer passes (the prompt) keep it: there it
    is 8x faster (README, "bf16 or float32 weights on a CPU"). float32 weights keep oneDNN, which
    is faster for them at small sizes."""
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype == torch.float32 or context.shape[0] > 1:
        return nullcontext()
    return torch.backends.mkldnn.flags(
        enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None
    )  # only the first flag changes


def cache_dtype(model: nn.Module) -> torch.dtype:
    """The KV cache's dtype: the weights', widened to float32 on a CPU, where attention runs in
    float32 (see attend): keys and values are then cast once when stored, not at every step."""
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return weight.dtype
    return torch.promote_types(weight.dtype, torch.float32)


# -----------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(checkpoint: dict, path: Path, replace: bool = True) -> None:
    """Atomic: a crash, a kill or a full disk while saving leaves the previous checkpoint.
    A run's first save (replace=False) creates the file only if no other program did meanwhile."""
    try:
        with files.atomic_file(path, replace=replace) as f:
            torch.save(checkpoint, f)
    except FileExistsError:
        raise UserError(
            f"checkpoint {path} was created by another program while this run trained: it is not "
            "replaced; train again into another --out"
        ) from None
    except OSError as e:
        raise UserError(
            f"cannot save checkpoint {path}: {e.strerror or e}; the previous one there is intact"
        ) from None


CHECKPOINT_KEYS = ("model_args", "vocab", "model", "iter", "best_val_loss")


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint safely: weights_only=True refuses pickled code instead of running it."""
    reason = files.unreadable_reason(path)
    if reason == "not found":
        raise UserError(f"checkpoint {path} not found; train one first with: python bigram.py")
    if reason is not None:
        raise UserError(f"checkpoint {path} {reason}")
    try:
        with warnings.catch_warnings():  # odd files make torch warn, then fail: we explain below
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds of error for a damaged file
        code = files.pickled_imports(path)
        if code:
            raise UserError(
                f"refusing to load {path}: it contains pickled code (it would call "
                f"{', '.join(sorted(set(code)))}); a checkpoint holds only weights and settings"
            ) from None
        reason = "not a file torch wrote" if "Weights only" in str(e) else first_line(e)
        raise UserError(f"checkpoint {path} is truncated or corrupt ({reason})") from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in CHECKPOINT_KEYS):
        raise UserError(f"{path} is not a ScratchGPT checkpoint (missing model, vocab or settings)")
    return checkpoint


def has_type(value, expected: type) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, but not to a setting
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def check_fields(values: dict, cls, what: str) -> None:
    """values could build cls (a dataclass): known names only, each of its field's type."""
    types = {f.name: f.type for f in fields(cls)}
    for name, value in values.items():
        if name not in types:
            raise UserError(f"{what}: unknown setting {name!r}")
        if not has_type(value, types[name]):
            raise UserError(f"{what}: {name} should be {types[name].__name__}, got {value!r}")


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def config_from_checkpoint(checkpoint: dict, path: Path) -> tuple[str, GPTConfig]:
    """The model type and shape a checkpoint declares, checked before anything is built."""
    args = checkpoint["model_args"]
    if not isinstance(args, dict):
        raise UserError(f"{path}: its model settings are not a dictionary")
    args = dict(args)
    model_type = args.pop("model_type", None)
    if model_type not in MODEL_TYPES:
        known = ", ".join(MODEL_TYPES)
        raise UserError(f"{path}: unknown model type {model_type!r} (known: {known})")
    check_fields(args, GPTConfig, f"{path}'s model settings")
    if "vocab_size" not in args:
        raise UserError(f"{path}'s model settings: vocab_size is missing")
    config = GPTConfig(**args)
    vocab = checkpoint["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
        raise UserError(f"{path}: its vocabulary is not a list of characters")
    if len(vocab) != config.vocab_size or len(set(vocab)) != len(vocab):
        raise UserError(
            f"{path}: its vocabulary has {len(vocab)} characters ({len(set(vocab))} distinct) "
            f"but the model expects {config.vocab_size}"
        )
    return model_type, config


def load_weights_growing_vocab(
    model: nn.Module, weights: dict, old_vocab: int, source: str
) -> None:
    """A trained model's weights, into a model whose vocabulary may be larger: the rows of the
    trained characters (embedding, head, bigram table) are copied, the rows of new characters
    keep the fresh initialisation that training gives them. Only vocabulary sizes may differ."""
    own = model.state_dict()  # shares storage with the parameters
    new_vocab = model.config.vocab_size
    try:
        if weights.keys() != own.keys():
            raise ValueError("different parameter names")
        for name, weight in weights.items():
            target = own[name]
            sizes = zip(weight.shape, target.shape, strict=False)
            fits = all(a == b or (a, b) == (old_vocab, new_vocab) for a, b in sizes)
            if weight.dim() != target.dim() or not fits:
                raise ValueError(f"{name} has shape {tuple(weight.shape)}")
            with torch.no_grad():
                target[tuple(slice(0, n) for n in weight.shape)].copy_(weight)
    except (AttributeError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{source}: its weights do not fit its settings ({first_line(e)})"
        ) from None


def model_from_checkpoint(
    checkpoint: dict, device: torch.device | str = "cpu", path: Path | str = "the checkpoint"
) -> nn.Module:
    """The model a checkpoint holds, its settings and weights checked against each other."""
    model_type, config = config_from_checkpoint(checkpoint, path)
    check_memory(config, batch_size=1, training=False, device=torch.device(device))
    model = build_model(model_type, config)
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{path}: its weights do not fit its settings ({first_line(e)})") from None
    return model.to(device)


# -----------------------------------------------------------------------------
# Memory: refuse a shape that cannot fit before trying to allocate it


def memory_needed(config: GPTConfig, batch_size: int, training: bool) -> int:
    """Rough bytes to run (or train) a model of this shape: weights, and for training their
    gradients and two AdamW moments plus the activations kept for the backward pass."""
    C, T, L, V = config.n_embd, config.block_size, config.n_layer, config.vocab_size
    parameters = 12 * L * C * C + C * (2 * V + T)
    if not training:
        return 4 * parameters + 2 * 4 * L * batch_size * T * C  # float32 weights, KV cache
    activations = batch_size * T * (20 * 4 * L * C + 3 * 4 * V)  # ~20 floats per channel-layer
    return 16 * parameters + activations


def memory_available(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on every system
        return None


def check_memory(config: GPTConfig, batch_size: int, training: bool, device: torch.device) -> None:
    """Refuse, with the figures, a shape that would not fit: allocating it would fail or hang."""
    needed = memory_needed(config, batch_size, training)
    available = memory_available(device)
    if available is not None and needed > available:
        raise UserError(
            f"a model with n_layer {config.n_layer}, n_embd {config.n_embd}, block_size "
            f"{config.block_size} needs about {needed / 2**30:,.1f} GiB, more than the "
            f"{available / 2**30:,.1f} GiB of this {device.type}: choose a smaller shape"
        )


# -----------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    dataset: str = "shakespeare"
    data: str = ""  # corpus path; empty means the dataset's default file
    out: str = ""  # checkpoint path; empty means checkpoints/<dataset>.pt
    preset: str = "cpu"
    model: str = "gpt"
    clean: bool = True  # line ends unified; Reddit: also HTML entities unescaped, [deleted] dropped
    max_vocab: int = corpus.DEFAULT_MAX_VOCAB  # Reddit: rarer characters become one symbol
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    batch_size: int = 64  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    dropout: float = 0.2
    max_iters: int = 5000
    eval_interval: int = 250
    eval_iters: int = 200
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_minutes: float = 0.0  # 0: no time budget
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    backend: str = ""  # torchrun only: nccl on CUDA, gloo otherwise
    seed: int = 1337
    # The architecture's switches (ARCHITECTURES); these defaults are the classic model, so the
    # settings saved by runs from before the switches existed still read the same.
    rope: bool = False
    norm: str = "layer"
    qk_norm: bool = False
    mlp: str = "gelu"
    bias: bool = True
    split_qkv: bool = False
    optimizer: str = "adamw"  # "muon": Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak learning rate (--lr is AdamW's)
    schedule: str = "cosine"  # after warmup: "cosine" to min_lr, or "wsd" (flat, then linear)
    init_from: str = ""  # fine-tuning: the trained checkpoint whose weights the run starts from
    sample_chars: int = 200  # a sample of this many characters at each evaluation (0: none)
    # Score every val character at each evaluation too, not only at the end of the run.
    exhaustive_eval: bool = False


MODEL_SWITCHES = ("rope", "norm", "qk_norm", "mlp", "bias", "split_qkv")
MODEL_SHAPE = ("model", "n_layer", "n_head", "n_embd", "block_size", *MODEL_SWITCHES)
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a character-level GPT (or the bigram baseline).")
    # Every setting defaults to None so we can tell what was given on the command line:
    # given flags override the preset (or, with --resume, the checkpoint's settings).
    p.add_argument("--dataset", choices=DATASET_FILES, help="default: shakespeare")
    p.add_argument("--data", help="corpus: a UTF-8 text file, or a .rar for reddit")
    p.add_argument("--out", help="checkpoint path (default checkpoints/<dataset>.pt)")
    p.add_argument("--preset", choices=PRESETS, help="default: gpu on CUDA, else by CPU class")
    p.add_argument("--model", choices=MODEL_TYPES, help="gpt (default) or the bigram baseline")
    for name, choices, text in [
        ("arch", ARCHITECTURES, "the switches below at once; default: the preset's (cpu: modern)"),
        ("rope", None, "rotary positions instead of a learned position table"),
        ("norm", NORMS, "LayerNorm or RMSNorm"),
        ("qk_norm", None, "RMS-norm queries and keys per head"),
        ("mlp", ACTIVATIONS, "the MLP's activation"),
        ("bias", None, "biases in linear layers and LayerNorm"),
        ("split_qkv", None, "queries, keys and values from three matrices (Muon: one update each)"),
        ("optimizer", OPTIMIZERS, "muon: Muon for the blocks' matrices, AdamW for the rest"),
        ("schedule", SCHEDULES, "after warmup: cosine, or wsd (warmup-stable-decay)"),
    ]:
        kind = {"choices": choices} if choices else {"action": argparse.BooleanOptionalAction}
        p.add_argument(flag(name), dest=name, help=text, **kind)
    for name, kind, text in [
        ("n_layer", int, "transformer blocks"),
        ("n_head", int, "attention heads per block"),
        ("n_embd", int, "channels (embedding width)"),
        ("block_size", int, "context length in characters"),
        ("batch_size", int, "sequences per micro-batch, per process"),
        ("grad_accum", int, "micro-batches per optimizer step"),
        ("dropout", float, "dropout rate"),
        ("max_iters", int, "optimizer steps"),
        ("eval_interval", int, "steps between evaluations (and saves)"),
        ("eval_iters", int, "batches per split in an evaluation"),
        ("lr", float, "peak learning rate (AdamW's)"),
        ("min_lr", float, "learning rate at the end of the decay (Muon's falls in proportion)"),
        ("muon_lr", float, "Muon's peak learning rate"),
        ("warmup_iters", int, "steps of linear warmup"),
        ("weight_decay", float, "weight decay of the matrices (AdamW and Muon)"),
        ("grad_clip", float, "clip the gradient norm to this (0: off)"),
        ("max_minutes", float, "time budget: the schedule fits it, then training stops (0: none)"),
        ("seed", int, "random seed"),
        ("max_vocab", int, "reddit: keep this many characters, the rarest become one symbol"),
        ("sample_chars", int, "characters of sample text at each evaluation (0: none)"),
        ("init_from", str, "fine-tune: start from this trained checkpoint's weights"),
    ]:
        p.add_argument("--" + name.replace("_", "-"), type=kind, dest=name, help=text)
    p.add_argument("--clean", action=argparse.BooleanOptionalAction,
                   help="--no-clean: the text exactly as written (CRLF, entities)")  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast precision; auto: bfloat16 where the hardware has it")  # fmt: skip
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="use torch.compile")
    p.add_argument("--exhaustive-eval", action=argparse.BooleanOptionalAction,
                   help="score every val character at each evaluation too")  # fmt: skip
    p.add_argument("--backend", choices=["nccl", "gloo"], help="torchrun: distributed backend")
    p.add_argument("--resume", action="store_true", help="continue the run saved at --out")
    p.add_argument("--plot", nargs="+", type=Path, metavar="RUN.jsonl",
                   help="draw these training logs into one picture, then exit")  # fmt: skip
    return p.parse_args(argv)


def default_preset(device: torch.device) -> str:
    """gpu on CUDA; on a CPU, the preset of its class: with bf16 instructions or without."""
    if device.type == "cuda":
        return "gpu"
    return "cpu" if hardware.native_bf16(device) else "cpu-float32"


def make_config(args: argparse.Namespace, device: torch.device, saved: dict | None) -> TrainConfig:
    """Preset (or the resumed run's saved settings), then the flags given on the command line."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    given = {k: v for k, v in given.items() if v is not None}
    arch = ARCHITECTURES[args.arch] if args.arch else {}  # switches given one by one win
    if saved is not None:
        if "preset" in given:
            raise UserError("--resume continues the saved settings; drop --preset")
        saved = {**ARCHITECTURES["classic"], **saved}  # a run from before the switches
        for name in (*MODEL_SHAPE, "optimizer"):
            value = given.get(name, arch.get(name))
            if value is not None and value != saved.get(name):
                which = flag(name) if name in given else "--arch"
                raise UserError(
                    f"--resume keeps the saved model's shape and optimizer; drop {which}"
                )
        return TrainConfig(**{**saved, **arch, **given})  # --arch's schedule applies
    preset = given.get("preset") or default_preset(device)
    config = TrainConfig(**{**PRESETS[preset], **arch, **given, "preset": preset})
    config.data = config.data or str(DATASET_FILES[config.dataset])
    config.out = config.out or str(CHECKPOINT_DIR / f"{config.dataset}.pt")
    return config


def arch_name(config: TrainConfig) -> str:
    """The architecture whose switches the config has, or "custom"."""
    switches = {name: getattr(config, name) for name in ARCHITECTURES["classic"]}
    return next((name for name, arch in ARCHITECTURES.items() if arch == switches), "custom")


def recipe(config: TrainConfig) -> str:
    """The architecture's name and its switches: what the run is made of."""
    details = ", ".join(f"{name}={getattr(config, name)}" for name in ARCHITECTURES["classic"])
    return f"{arch_name(config)} ({details})"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


MAX_SAMPLE_CHARS = 100_000  # a sample at each evaluation: longer would cost more than training
MAX_SEED = 2**63 - 1  # numpy's SeedSequence and torch's generators both take 0 .. 2**63 - 1


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")


def validate(config: TrainConfig) -> None:
    positive = ["batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters"]
    for name in positive:
        if getattr(config, name) < 1:
            raise UserError(f"{flag(name)} must be at least 1")
    numbers = ["lr", "min_lr", "muon_lr", "warmup_iters", "weight_decay", "grad_clip"]
    for name in [*numbers, "max_minutes"]:
        value = getattr(config, name)
        if not math.isfinite(value):  # NaN passes every comparison below: refuse it first
            raise UserError(f"{flag(name)} must be a finite number, got {value}")
        if value < 0:
            raise UserError(f"{flag(name)} must not be negative")
    if config.lr <= 0 or config.min_lr > config.lr:
        raise UserError("learning rates must satisfy 0 <= --min-lr <= --lr and --lr > 0")
    if config.muon_lr <= 0:
        raise UserError("--muon-lr must be above 0")
    for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        if getattr(config, name) not in choices:  # a damaged checkpoint's settings
            raise UserError(f"{flag(name)} must be one of {', '.join(choices)}")
    check_seed(config.seed)
    if not 0 <= config.sample_chars <= MAX_SAMPLE_CHARS:
        raise UserError(f"--sample-chars must be between 0 and {MAX_SAMPLE_CHARS:,}")


def is_reddit(config: TrainConfig) -> bool:
    return config.dataset == "reddit" or corpus.is_rar(Path(config.data))


def load_corpus(config: TrainConfig) -> corpus.Corpus:
    path = Path(config.data)
    if is_reddit(config):
        return corpus.load_reddit(path, CACHE_DIR, clean=config.clean, max_vocab=config.max_vocab)
    if files.unreadable_reason(path) == "not found" and path == DATASET_FILES["shakespeare"]:
        corpus.download_shakespeare(path)
    return corpus.load_text_corpus(path, clean=config.clean)


def get_batch(data: np.ndarray, config: TrainConfig, generator: torch.Generator):
    """Random windows of block_size + 1 tokens: inputs are the first block_size, targets the
    last block_size (the same window shifted by one)."""
    starts = torch.randint(len(data) - config.block_size, (config.batch_size,), generator=generator)
    windows = starts.numpy()[:, None] + np.arange(config.block_size + 1)
    batch = torch.from_numpy(data[windows].astype(np.int64))
    return batch[:, :-1], batch[:, 1:]


def step_seed(seed: int, rank: int, step: int) -> int:
    """Each step's randomness (batches, dropout masks) comes from (seed, rank, step) alone:
    a resumed run needs no saved RNG state to continue exactly, and each rank draws its own data."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])


@torch.no_grad()
def estimate_loss(model, splits: dict, config: TrainConfig, device, dtype) -> dict:
    """Mean loss over eval_iters batches per split, the same batches each time so evals compare."""
    model.eval()
    losses = {}
    for split, data in splits.items():
        generator = torch.Generator().manual_seed(config.seed + 1)
        total = 0.0
        for _ in range(config.eval_iters):
            x, y = get_batch(data, config, generator)
            with autocast(device, dtype):
                _, loss = model(x.to(device), y.to(device))
            total += loss.item()
        losses[split] = total / config.eval_iters
    model.train()
    return losses


PROGRESS_BAR = "{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"
LN2 = math.log(2)  # nats per bit: a loss in nats over LN2 is bits per character
EXHAUSTIVE_MAX_CHARS = 2_000_000  # a Reddit-sized split is scored on its first 2M characters


@torch.no_grad()
def exhaustive_val_loss(model, data: np.ndarray, block_size: int, device, dtype) -> float:
    """Every validation character scored once, in consecutive windows of block_size: the same
    mean context as estimate_loss's random windows (each restarts its context), without their
    sampling noise. The figure to compare runs by."""
    data = data[: EXHAUSTIVE_MAX_CHARS + 1]
    total, count = 0.0, 0
    model.eval()
    rows_per_batch = 64
    for start in range(0, len(data) - 1, rows_per_batch * block_size):
        chunk = torch.from_numpy(
            data[start : start + rows_per_batch * block_size + 1].astype(np.int64)
        )
        x, y = chunk[:-1], chunk[1:]
        full = len(x) // block_size * block_size
        # Whole windows as one batch, then the split's last, shorter window on its own.
        for xs, ys in ((x[:full].view(-1, block_size), y[:full].view(-1, block_size)),
                       (x[full:][None], y[full:][None])):  # fmt: skip
            if ys.numel() == 0:
                continue
            with autocast(device, dtype):
                logits, _ = model(xs.to(device))
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), ys.to(device).flatten(), reduction="sum"
            )
            total, count = total + loss.item(), count + ys.numel()
    model.train()
    return total / count


def run_progress(it: int, elapsed: float, config: TrainConfig) -> float:
    """The share of the run done (0..1): of its iterations, or of its time budget if that is
    further along. The learning rate schedule and the progress bar both follow it."""
    by_time = elapsed / (config.max_minutes * 60) if config.max_minutes else 0.0
    return min(1.0, max(it / config.max_iters, by_time))


def lr_scale(progress: float, step: int, config: TrainConfig) -> float:
    """The share of each peak learning rate to use now: linear warmup, then down to
    min_lr / lr as progress (0..1) goes to 1, along a cosine or, for "wsd", flat until the last
    WSD_DECAY_SHARE of the run and then in a straight line."""
    if step < config.warmup_iters:
        return (step + 1) / config.warmup_iters
    floor, progress = config.min_lr / config.lr, min(progress, 1.0)
    if config.schedule == "wsd":
        remaining = (1 - progress) / WSD_DECAY_SHARE  # 1 when the decay starts, 0 at the end
        return floor + min(1.0, remaining) * (1 - floor)
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - floor)


def make_optimizers(model: nn.Module, config: TrainConfig, device: torch.device) -> list:
    """AdamW that decays only matrices (biases and norm gains stay free); with --optimizer muon,
    the blocks' matrices go to Muon instead, which orthogonalises each update (every direction
    of the matrix moves by the same amount). Embeddings and the head stay on AdamW: Muon is
    meant for hidden layers, and torch's Muon takes nothing but 2-D tensors."""
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            to_muon = config.optimizer == "muon" and name.startswith("blocks.") and p.dim() == 2
            (hidden if to_muon else rest).append(p)
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    optimizers = [torch.optim.AdamW(groups, lr=config.lr, betas=ADAM_BETAS, fused=fused)]
    if hidden:
        optimizers.append(
            hardware.muon(hidden, device, lr=config.muon_lr, weight_decay=config.weight_decay,
                          momentum=MUON_MOMENTUM, nesterov=True)
        )  # fmt: skip
    return optimizers


def set_learning_rates(optimizers: list, config: TrainConfig, scale: float) -> None:
    for optimizer in optimizers:
        peak = config.muon_lr if isinstance(optimizer, torch.optim.Muon) else config.lr
        for group in optimizer.param_groups:
            group["lr"] = peak * scale


def train_step(model, optimizers, scaler, micro_batches, grad_clip: float, device, dtype):
    """One optimizer step over grad-accum micro-batches; returns the last micro-batch's loss.

    Under DDP, gradients are averaged across processes once, on the last micro-batch only.
    The GradScaler matters for float16 only (elsewhere it passes everything through): it scales
    the loss up so that small gradients do not round to zero, and skips steps that overflow.
    """
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = nullcontext() if last or not isinstance(model, DDP) else model.no_sync()
        with sync:
            with autocast(device, dtype):
                _, loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            scaler.scale(loss / len(micro_batches)).backward()  # the step follows their mean
    for optimizer in optimizers:
        scaler.unscale_(optimizer)  # clip the true gradients
    overflow = False
    if grad_clip > 0 or scaler.is_enabled():
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
        # float16 overflowed somewhere: every optimizer skips the step, not only the one that saw it
        overflow = scaler.is_enabled() and not torch.isfinite(norm).item()
    if not overflow:
        for optimizer in optimizers:
            scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return loss


def make_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token: 6 per weight (forward + backward) plus attention (PaLM, app. B)."""
    c = model.config
    n = count_parameters(model)
    if isinstance(model, GPTLanguageModel):
        if not c.rope:  # a table lookup, not a product
            n -= model.position_embedding.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
    return 6 * n


def append_log(path: Path, record: dict, new: bool = False) -> None:
    """One line per record; a new log (new=True) is created only if no other program did."""
    try:
        with path.open("x" if new else "a") as f:
            f.write(json.dumps(record) + "\n")
    except FileExistsError:
        raise UserError(
            f"training log {path} was created by another program while this run trained; "
            "the checkpoint is saved: continue with --resume once you moved that file away"
        ) from None
    except OSError as e:
        raise UserError(f"cannot write the training log {path}: {e.strerror}") from None


def log_records(path: Path) -> list[tuple[str, dict]]:
    """The lines of a log that a run wrote (each with its iter), with their records."""
    return [(line, r) for line, r in plots.log_lines(path) if isinstance(r.get("iter"), int)]


def is_training_log(path: Path) -> bool:
    """Empty, or holding at least one line that a run wrote: not someone else's file."""
    return path.stat().st_size == 0 or bool(log_records(path))


def trim_log(path: Path, last_iter: int) -> None:
    """On resume, drop log lines past the checkpoint (those iterations are about to be redone)
    and the summary that ended the interrupted run (the resumed run will write its own)."""
    if path.exists():
        kept = [line + "\n" for line, record in log_records(path)
                if record["iter"] <= last_iter and "val_loss" in record]  # fmt: skip
        with files.atomic_file(path) as f:  # a kill now leaves the old log, not half of it
            f.write("".join(kept).encode("utf-8"))


@contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C (or SIGTERM) into a request to stop after the current step.

    Training then ends the way it does at max_iters: evaluate, save. A second Ctrl-C raises
    KeyboardInterrupt at once; the checkpoint on disk is still the last complete one.
    """
    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -----------------------------------------------------------------------------
# Several processes (torchrun): one per GPU, or several on one CPU


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:  # rank 0 evaluates, logs, prints and saves
        return self.rank == 0


def setup_distributed(device: torch.device, backend: str) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (it sets RANK); else a single process."""
    if "RANK" not in os.environ:
        return Distributed(), device
    needed = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise UserError(
            f"RANK is set but {', '.join(missing)} not: start distributed runs with torchrun "
            "(see the README), or unset RANK"
        )
    try:
        ddp = Distributed(*(int(os.environ[name]) for name in needed[:3]))
    except ValueError:
        raise UserError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers") from None
    if device.type == "mps":
        raise UserError("distributed training runs on CUDA or CPU, not MPS")
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return ddp, device


def agree_to_stop(
    stop: bool, diverged: bool, elapsed: float, ddp: Distributed, device
) -> tuple[bool, bool, float]:
    """All ranks must stop at the same step, for the same reason, and share one clock (it sets
    the learning rate)."""
    if ddp.world_size == 1:
        return stop, diverged, elapsed
    flags = torch.tensor([stop, diverged, elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1]), flags[2].item()


# -----------------------------------------------------------------------------
# The training run


def checkpoint_path(args: argparse.Namespace) -> Path:
    """--out, or checkpoints/<dataset>.pt; a fine-tuned model is named after its corpus and its
    starting point (checkpoints/mytext-from-shakespeare.pt), never after the model it came from."""
    if args.out:
        return Path(args.out)
    dataset = args.dataset or "shakespeare"
    if args.init_from:
        data = Path(args.data or DATASET_FILES[dataset])
        return CHECKPOINT_DIR / f"{data.stem}-from-{Path(args.init_from).stem}.pt"
    return CHECKPOINT_DIR / f"{dataset}.pt"


def run_outputs(checkpoint: Path) -> dict[str, Path]:
    """Every file a training run creates or replaces, each named after its checkpoint (run.pt):
    the checkpoint, its log (run.pt.jsonl, a line per evaluation), its picture (run.pt.png) and
    its lock (run.pt.lock). Each is written through a temporary file beside it
    (run.pt.XXXXXXXX.tmp). A Reddit archive's token cache goes to data/cache, under names that
    carry a hash of the archive."""
    return {
        "checkpoint": checkpoint,
        "training log": checkpoint.with_name(checkpoint.name + ".jsonl"),
        "picture": checkpoint.with_name(checkpoint.name + ".png"),
        "lock": files.lock_path(checkpoint),
    }


def log_path(checkpoint: Path) -> Path:
    return run_outputs(checkpoint)["training log"]


def load_resumable(out: Path) -> dict:
    """The checkpoint --resume continues, with its training state checked before it is used."""
    if files.unreadable_reason(out) == "not found":
        raise UserError(f"--resume: there is no checkpoint at {out} to continue")
    checkpoint = load_checkpoint(out)
    if not {"config", "optimizer", "elapsed_s"} <= checkpoint.keys():
        raise UserError(f"--resume: {out} holds a model but not the training state to continue")
    if not isinstance(checkpoint["config"], dict) or not isinstance(checkpoint["optimizer"], dict):
        raise UserError(f"--resume: {out}'s training state is damaged")
    check_fields(checkpoint["config"], TrainConfig, f"--resume: {out}'s training settings")
    config_from_checkpoint(checkpoint, out)
    identity = checkpoint.get("corpus")  # absent from checkpoints older than the record
    if identity is not None and not (
        isinstance(identity, dict)
        and has_type(identity.get("chars"), int)
        and isinstance(identity.get("sha256"), str)
    ):
        raise UserError(f"--resume: {out}'s record of its corpus is damaged")
    numbers = {"iter": int, "best_val_loss": float, "elapsed_s": float}
    for name, kind in numbers.items():
        value = checkpoint[name]
        if not has_type(value, kind):
            raise UserError(f"--resume: {out}'s {name} should be {kind.__name__}, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"--resume: {out}'s {name} is {value}, which cannot be continued")
    return checkpoint


def run_inputs(config: TrainConfig) -> dict[str, Path]:
    """The files a run reads, by what they are to it."""
    inputs = {"the corpus (--data)": Path(config.data)}
    if config.init_from:
        inputs["the checkpoint it starts from (--init-from)"] = Path(config.init_from)
    return inputs


def check_paths(config: TrainConfig, resume: bool) -> None:
    """No output of the run (run_outputs) is one of its inputs, and none replaces a file the run
    did not make: a new run finds none of them but a picture drawn by a run; --resume finds its
    own checkpoint, and a log that is a training log."""
    outputs, inputs = run_outputs(Path(config.out)), run_inputs(config)
    for what, path in outputs.items():
        files.check_not_input(path, what, inputs)
    for what in ("training log", "picture"):  # train() checked the checkpoint
        files.check_writable(outputs[what], what, named_by_user=False)
    out, log = outputs["checkpoint"], outputs["training log"]
    if resume:
        # A picture without the mark may be this run's own, drawn by an older version: it is
        # kept and no longer redrawn, rather than a reason to refuse the resume.
        if log.exists() and not is_training_log(log):
            raise UserError(f"{log} is not a training log: move it away to resume {out}")
        return
    plots.check_replaceable(outputs["picture"])
    if out.exists() or out.is_symlink():  # a new run must never replace a trained model
        raise UserError(
            f"{out} exists: continue it with --resume --out {out}, or train into another --out"
        )
    if log.exists() or log.is_symlink():
        raise UserError(
            f"{log} exists (the log of an earlier run): remove it, or use another --out"
        )


def warn_ignored_flags(args: argparse.Namespace, config: TrainConfig) -> None:
    ignored = []
    if not is_reddit(config):
        if args.max_vocab is not None:
            ignored.append("--max-vocab applies to Reddit archives only")
    if args.backend and "RANK" not in os.environ:
        ignored.append("--backend applies to distributed runs (torchrun) only")
    for note in ignored:
        print(f"warning: {note}; ignored", file=sys.stderr)


def load_starting_point(args: argparse.Namespace) -> dict:
    """The trained checkpoint --init-from fine-tunes: its shape wins over the preset's."""
    if args.resume:
        raise UserError("--init-from starts a new run; --resume continues one: choose one")
    given = [name for name in (*MODEL_SHAPE, "arch") if getattr(args, name) is not None]
    if given:
        raise UserError(f"--init-from: the shape comes from the checkpoint; drop {flag(given[0])}")
    source = load_checkpoint(Path(args.init_from))
    config_from_checkpoint(source, args.init_from)
    return source


def check_same_corpus(given: Path, saved: Path, out: Path) -> None:
    """--resume continues a run on its own corpus: another one is a mistake (say, --out forgotten
    and the default checkpoint resumed), unless the saved one has gone (moved)."""
    if saved.exists() and not files.same_file(given, saved):
        raise UserError(
            f"--resume continues {out}, which trained on {saved}, not {given}: "
            "give that run's --out, or drop --data"
        )


def corpus_identity(tokens: np.ndarray) -> dict:
    """What a run trains on, to tell a changed corpus on --resume: its length in characters and a
    hash of all its tokens (cheap even for a Reddit-sized corpus: a hash runs at memory speed)."""
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(tokens)).cast("B"))
    return {"chars": len(tokens), "sha256": digest.hexdigest()}


def check_corpus_unchanged(saved: dict | None, now: dict, config: TrainConfig) -> None:
    """The corpus a run continues on is the one it trained on: another one moves the validation
    split (the last 10%) over text that was trained on, so its losses would not compare."""
    if saved is None or saved == now:  # checkpoints from before the record: nothing to compare
        return
    if saved.get("chars") != now["chars"]:
        change = f"{saved.get('chars'):,} characters then, {now['chars']:,} now"
    else:
        change = "the same length, other text"
    raise UserError(
        f"--resume: {config.data} has changed since {config.out} trained on it ({change}), so its "
        f"validation losses would not compare; to train on it anyway, start a new run from the "
        f"model: python bigram.py --init-from {config.out} --data {config.data} --out NEW.pt"
    )


def shape_of(checkpoint: dict) -> dict:
    """The TrainConfig settings that a checkpoint's model fixes."""
    args = checkpoint["model_args"]
    defaults = {f.name: f.default for f in fields(GPTConfig)}  # checkpoints before the switches
    shape = {k: args.get(k, defaults[k]) for k in MODEL_SHAPE if k != "model"}
    return {"model": args["model_type"], **shape}


def prepare_run(args: argparse.Namespace, device: torch.device, ddp: Distributed):
    """Settings, corpus, and the checkpoint to continue (--resume) or to start from
    (--init-from), all checked up front."""
    out = checkpoint_path(args)
    checkpoint = load_resumable(out) if args.resume else None
    source = load_starting_point(args) if args.init_from else None
    if checkpoint is not None and args.data:
        check_same_corpus(Path(args.data), Path(checkpoint["config"].get("data", args.data)), out)
    config = make_config(args, device, checkpoint["config"] if checkpoint else None)
    if source is not None:
        config = replace(config, **shape_of(source))
    config.out = str(out)  # where the checkpoint is now, even if it was moved since
    validate(config)
    if ddp.is_main:
        check_paths(config, args.resume)
        warn_ignored_flags(args, config)
        inputs = list(run_inputs(config).values())
        for path in run_outputs(out).values():  # a killed save's leftovers (we hold the lock)
            files.remove_stale_temps(path, keep=inputs)
    data = load_corpus(config)
    trained = checkpoint or source
    if trained is not None:  # the model's characters keep their ids
        data, added = corpus.adopt_vocab(data, trained["vocab"])
        if added and checkpoint is not None:
            raise UserError(
                f"--resume: {config.data} has characters that {out} never saw "
                f"({', '.join(map(repr, added[:10]))}): a different vocabulary"
            )
        if added and ddp.is_main:
            print(f"vocabulary: {len(trained['vocab'])} characters from {config.init_from}, "
                  f"{len(added)} added: {''.join(added[:40])!r}")  # fmt: skip
    identity = corpus_identity(data.tokens)
    if checkpoint is not None:
        check_corpus_unchanged(checkpoint.get("corpus"), identity, config)
    if len(data.tokens) < 10 * (config.block_size + 1):
        raise UserError(
            f"corpus {config.data} has {len(data.tokens)} characters; it needs at least "
            f"{10 * (config.block_size + 1)} (10 x (block_size + 1)) so that the 10% validation "
            "split holds one window"
        )
    return config, data, checkpoint, source, identity


def train(args: argparse.Namespace) -> str | None:
    """Train as the flags say; returns the summary line (None on ranks other than 0)."""
    ddp, device = setup_distributed(resolve_device(args.device or "auto"), args.backend or "")
    if not ddp.is_main:
        return run(args, ddp, device)
    out = checkpoint_path(args)
    files.check_writable(out, "checkpoint")  # and its folder exists, for the lock file
    with files.exclusive_lock(out, "checkpoint"):  # one run per checkpoint at a time
        return run(args, ddp, device)


def run(args: argparse.Namespace, ddp: Distributed, device: torch.device) -> str | None:
    from tqdm import tqdm

    if not ddp.is_main:
        dist.barrier()  # rank 0 first: it downloads the corpus or builds the token cache once
    config, data, checkpoint, source, identity = prepare_run(args, device, ddp)
    if ddp.is_main and ddp.world_size > 1:
        dist.barrier()
    dtype = resolve_dtype(config.dtype, device)
    say = print if ddp.is_main else lambda *a, **k: None
    if not args.resume and not args.preset:
        budget = f", {config.max_minutes:g} minutes" if config.max_minutes else ""
        say(f"preset: {config.preset}{budget} (picked for this {device.type}; --preset overrides)")
    train_data, val_data = split_corpus(data.tokens)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model_args = dict(
        vocab_size=len(data.vocab), block_size=config.block_size, n_layer=config.n_layer,
        n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout,
        **{name: getattr(config, name) for name in MODEL_SWITCHES},
    )  # fmt: skip
    model_config = GPTConfig(**model_args)
    check_memory(model_config, config.batch_size, training=True, device=device)
    model = build_model(config.model, model_config).to(device)
    optimizers = make_optimizers(model, config, device)
    scaler = make_scaler(device, dtype)
    start_iter, best_val_loss, elapsed_before = 0, float("inf"), 0.0
    log = log_path(Path(config.out))
    if source is not None:
        load_weights_growing_vocab(model, source["model"], len(source["vocab"]), config.init_from)
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizers[0].load_state_dict(checkpoint["optimizer"])
            if len(optimizers) > 1:
                optimizers[1].load_state_dict(checkpoint["muon"])
        except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise UserError(f"--resume: damaged state in {config.out} ({first_line(e)})") from None
        start_iter, best_val_loss = checkpoint["iter"], checkpoint["best_val_loss"]
        elapsed_before = checkpoint["elapsed_s"]
    if ddp.is_main and checkpoint is not None:
        trim_log(log, start_iter)
    forward = torch.compile(model) if config.compile else model
    if ddp.world_size > 1:
        forward = DDP(forward, device_ids=[device.index] if device.type == "cuda" else None)

    tokens_per_step = config.batch_size * config.block_size * config.grad_accum * ddp.world_size
    say(
        f"architecture: {recipe(config)}\n"
        f"{config.model}: {count_parameters(model) / 1e6:.2f}M parameters, vocab "
        f"{len(data.vocab)}, {len(train_data):,} train / {len(val_data):,} val tokens, on "
        f"{ddp.world_size} x {device.type} in {str(dtype).removeprefix('torch.')}\n"
        f"tokens per optimizer step: {tokens_per_step:,} = batch {config.batch_size} x block "
        f"{config.block_size} x grad-accum {config.grad_accum} x processes {ddp.world_size}"
    )
    splits = {"train": train_data, "val": val_data}
    best_iter = start_iter

    saved = logged = checkpoint is not None  # a new run's first save and log line create files

    def evaluate_and_save(it: int, elapsed: float, tokens_per_sec: float) -> None:
        nonlocal best_val_loss, best_iter, bad_loss, saved, logged
        losses = estimate_loss(model, splits, config, device, dtype)
        val_bpc = losses["val"] / LN2
        record = {"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]}
        record |= {"val_bpc": val_bpc, "lr": optimizers[0].param_groups[0]["lr"]}
        record |= {"tokens_per_sec": tokens_per_sec, "elapsed_s": elapsed}
        bar.write(
            f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
            f"({val_bpc:.3f} bits/char)"
        )
        if config.exhaustive_eval and math.isfinite(losses["val"]):
            exhaustive = exhaustive_val_loss(model, val_data, config.block_size, device, dtype)
            record |= {"exhaustive_val_loss": exhaustive, "exhaustive_val_bpc": exhaustive / LN2}
            bar.write(
                f"    exhaustive val loss {exhaustive:.4f} ({exhaustive / LN2:.3f} bits/char)"
            )
        if config.sample_chars and math.isfinite(losses["val"]):
            with autocast(device, dtype):
                record["sample"] = training_sample(
                    model, data.vocab, config.sample_chars, config.seed, device
                )
            bar.write("".join(f"    | {line}\n" for line in record["sample"].split("\n")), end="")
        if losses["val"] < best_val_loss:  # never true for NaN: a diverged model is not saved
            best_val_loss, best_iter = losses["val"], it
            state = {
                "model_args": model_args | {"model_type": config.model},
                "vocab": data.vocab,
                "model": model.state_dict(),
                "optimizer": optimizers[0].state_dict(),  # AdamW's, as before Muon existed
                **({"muon": optimizers[1].state_dict()} if len(optimizers) > 1 else {}),
                "iter": it,
                "best_val_loss": best_val_loss,
                "rng": {"seed": config.seed, "next_step": it},  # see step_seed
                "config": asdict(config),
                "elapsed_s": elapsed,
                "corpus": identity,  # see check_corpus_unchanged
            }
            save_checkpoint(state, Path(config.out), replace=saved)
            saved = True
        # The checkpoint first, then the log: a kill between them leaves a checkpoint that
        # --resume continues (trimming the log to it), never a log that nothing continues.
        if saved:
            append_log(log, record, new=not logged)
            logged = True
            picture.draw([log])
        if not math.isfinite(losses["val"]):
            bad_loss = losses["val"]

    # The bar counts the share of the run done, so its time left is right whichever budget ends it.
    done = run_progress(start_iter, elapsed_before, config)
    bar = tqdm(total=1.0, initial=done, bar_format=PROGRESS_BAR, disable=not ddp.is_main)
    picture = plots.RunPicture(run_outputs(Path(config.out))["picture"], note=bar.write)
    t_start = time.perf_counter() - elapsed_before
    budget_s = config.max_minutes * 60
    it, last_eval, tokens_per_sec = start_iter, start_iter, 0.0
    t_window, it_window = time.perf_counter(), start_iter
    why, bad_loss = f"{config.max_iters} iterations done", None
    with stop_requests() as stop, closing(bar):  # closed, also by an error: it ends its line
        while it < config.max_iters:
            out_of_time = budget_s > 0 and time.perf_counter() - t_start >= budget_s
            halt, diverged, elapsed = agree_to_stop(
                stop.is_set() or out_of_time, bad_loss is not None,
                time.perf_counter() - t_start, ddp, device,
            )  # fmt: skip
            if diverged:
                break
            if halt:
                why = "interrupted" if stop.is_set() else f"{config.max_minutes:g} minutes spent"
                bar.write(f"stopping at iter {it} ({why}): evaluating, saving if best")
                break
            scale = lr_scale(run_progress(it, elapsed, config), it, config)
            set_learning_rates(optimizers, config, scale)
            seed = step_seed(config.seed, ddp.rank, it)
            torch.manual_seed(seed)  # dropout masks
            batches = torch.Generator().manual_seed(seed)
            micro = [get_batch(train_data, config, batches) for _ in range(config.grad_accum)]
            loss = train_step(forward, optimizers, scaler, micro, config.grad_clip, device, dtype)
            it += 1
            bar.update(run_progress(it, time.perf_counter() - t_start, config) - bar.n)
            if it % 10 == 0:  # reading the loss waits for the GPU: not every step
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    bad_loss = loss_value
                now = time.perf_counter()
                tokens_per_sec = (it - it_window) * tokens_per_step / (now - t_window)
                t_window, it_window = now, it
                bar.set_postfix(
                    iter=it,
                    loss=f"{loss_value:.4f}",
                    lr=f"{config.lr * scale:.2e}",
                    tok_s=f"{tokens_per_sec:,.0f}",
                )
            if it % config.eval_interval == 0 and ddp.is_main and bad_loss is None:
                evaluate_and_save(it, time.perf_counter() - t_start, tokens_per_sec)
                last_eval = it
        if it != last_eval and ddp.is_main and bad_loss is None:
            evaluate_and_save(it, time.perf_counter() - t_start, tokens_per_sec)
    if ddp.world_size > 1:
        # DDP holds the process group inside reference cycles: free it now, not while Python shuts
        # down, when gloo's threads can no longer be joined and the process aborts.
        del forward
        gc.collect()
        dist.barrier()  # leave together
        dist.destroy_process_group()
    if not ddp.is_main:
        return None
    kept = (
        f"{config.out} keeps the best model (iter {best_iter}, val loss {best_val_loss:.4f})"
        if math.isfinite(best_val_loss)
        else "nothing was saved"
    )
    if bad_loss is not None:
        raise UserError(
            f"training diverged: the loss became {bad_loss} by iter {it}; {kept}; try a lower --lr"
        )
    if not math.isfinite(best_val_loss):
        raise UserError(f"the run stopped at iter {it} before any evaluation ({why}): {kept}")
    # The figure to compare runs by: the saved (best) model on every val character.
    if best_iter != it:  # the weights in memory moved on since the best evaluation
        model.load_state_dict(load_checkpoint(Path(config.out), device)["model"])
    exhaustive = exhaustive_val_loss(model, val_data, config.block_size, device, dtype)
    scored = min(len(val_data) - 1, EXHAUSTIVE_MAX_CHARS)
    final = {"exhaustive_val_loss": exhaustive, "exhaustive_val_bpc": exhaustive / LN2}
    append_log(log, {"iter": best_iter, **final, "val_chars_scored": scored})
    print(
        f"exhaustive val loss {exhaustive:.4f} ({exhaustive / LN2:.3f} bits/char): the best model "
        f"on every one of {scored:,} val characters"
    )
    return f"best val loss {best_val_loss:.4f} at iter {best_iter} -> {config.out}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.plot:
            print(f"wrote {plots.plot_logs(args.plot)}")
            return 0
        summary = train(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before training, or a second Ctrl-C during it
        print("interrupted: no file was left half-written", file=sys.stderr)
        return 130
    if summary is not None:
        print(summary)
    return 0


if __name__ == "__main__":
    files.setup_console()
    sys.exit(main())
