"""ScratchGPT: a character-level GPT, written from scratch, and how it is trained.

    python bigram.py                      # Tiny Shakespeare, the preset picked for this machine
    python bigram.py --preset gpu         # the reference run: 6 layers, 6 heads, 384 channels
    python bigram.py --model-type bigram  # the bigram baseline this repository is named after

The file reads top to bottom: the model (GPTConfig, attention, MLP, blocks, the GPT), generation
(sampling with a KV cache), then training (the presets, one step, the run and its loop) and the
command that starts it (main). What is not the model or its training lives in scratchgpt/, in
modules named for what they hold (the batches in dataloader.py, the losses in scoring.py, the
schedule and the update in optimizers.py); none of them imports this file, which hands them what
they need of it. Importing this file has no side effects.
"""

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from scratchgpt import (
    checkpoint,
    corpus,
    dataloader,
    distillation,
    distributed,
    kernels,
    machine,
    reddit,
    runlog,
    scoring,
    train_cli,
)
from scratchgpt.cli import setting, setup_console
from scratchgpt.machine import autocast
from scratchgpt.optimizers import (
    apply_gradients,
    lr_scale,
    make_optimizers,
    make_scaler,
    set_learning_rates,
)

# -----------------------------------------------------------------------------
# The model


model_switch = partial(setting, shape=True, switch=True)  # a piece of the model's recipe


@dataclass
class GPTConfig:
    vocab_size: int = 65  # characters the model knows (Tiny Shakespeare's); set from the corpus
    block_size: int = setting(256, "context length in characters", shape=True)
    n_layer: int = setting(6, "transformer blocks", shape=True)
    n_head: int = setting(6, "attention heads per block", shape=True)
    n_embd: int = setting(384, "channels (embedding width)", shape=True)
    dropout: float = setting(0.2, "dropout rate")
    # The switches of the modern recipe (ARCHITECTURES below); their defaults are the 2019 model.
    bias: bool = model_switch(True, "biases in linear layers and LayerNorm")
    rope: bool = model_switch(False, "rotary positions instead of a position table")
    norm: str = model_switch("layer", "LayerNorm, or RMSNorm (no mean)", ("layer", "rms"))
    qk_norm: bool = model_switch(False, "RMS-norm queries and keys per head")
    mlp: str = model_switch("gelu", "the MLP's activation", ("gelu", "relu2"))
    split_qkv: bool = model_switch(False, "q, k, v from three matrices (Muon: one each)")
    residual_scalars: bool = model_switch(False, "each block reads a learned mix of the residual "
                                          "stream and the embedding")  # fmt: skip

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise ValueError("rotary positions need an even head size (n_embd / n_head)")
        for f in fields(self):  # a TrainConfig's settings too: each is one of its choices
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value not in choices and value != f.default:  # backend "": none
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


def model_settings(config: GPTConfig) -> dict:
    """The GPTConfig part of a config (a TrainConfig holds one): what builds the model."""
    return {f.name: getattr(config, f.name) for f in fields(GPTConfig)}


class KVCache:
    """Keys and values of every layer for the tokens seen so far: with it, each new token costs
    one position of work instead of a pass over the whole context."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype: torch.dtype):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        zeros = partial(torch.zeros, shape, device=device, dtype=dtype)
        self.layers = [(zeros(), zeros()) for _ in range(config.n_layer)]  # (keys, values) each
        self.length = 0  # positions filled so far
        self.capacity = config.block_size


ROPE_BASE = 10000.0  # the longest wavelength of the rotary positions, in characters


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rms":
        return kernels.RMSNorm(config.n_embd)  # a learned gain only
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def rotary(start: int, length: int, head_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_size / 2) of the rotation angles of positions start, start + 1, ...
    Attention turns each pair of channels (i, i + head_size / 2) of a query or key by its
    position's angle (kernels.rotate). A query at p and a key at q then meet at an angle that
    depends on p - q only: attention sees how far back a character is, not where it sits.

    Angles are computed in float64: positions past a million stay exact, so a rolling KV cache can
    run on for as long as generation does."""
    freqs = ROPE_BASE ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.arange(start, start + length, dtype=torch.float64)[:, None] * freqs
    return angles.cos().float().to(device), angles.sin().float().to(device)


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
        self.resid_dropout = kernels.Dropout(config.dropout)

    def qkv_product(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values side by side, (B, T, 3 * C)."""
        if not self.split_qkv:
            return self.qkv(x)
        return kernels.joined_linear(x, (self.q, self.k, self.v))  # three matrices, one product

    def forward(self, x, cache=None, start: int = 0, rope=None):
        B, T, C = x.shape
        # SDPA's causal mask is aligned top-left, so a multi-token step must start an empty cache.
        assert T == 1 or start == 0, "multi-token steps must start an empty cache"
        head_size = C // self.n_head
        # queries, keys and values as (B, n_head, T, head_size) each
        # one (B, T, 3 * C) -> (B, T, 3, n_head, head_size) -> (3, B, n_head, T, ...)
        q, k, v = self.qkv_product(x).view(B, T, 3, self.n_head, head_size).permute(2, 0, 3, 1, 4)
        if self.qk_norm:  # unit-RMS queries and keys: no logit can grow without bound
            q, k = kernels.rms_norm(q), kernels.rms_norm(k)
        if rope is not None:
            q, k = kernels.rotate(q, *rope), kernels.rotate(k, *rope)
        if cache is not None:
            # Store this step's keys/values, then attend over everything cached so far. Slots are
            # reused in a ring: past the window only rotary positions get here (see forward).
            cache_k, cache_v = cache
            slot, filled = start % cache_k.shape[2], min(start + T, cache_k.shape[2])
            cache_k[:, :, slot : slot + T] = k
            cache_v[:, :, slot : slot + T] = v
            k, v = cache_k[:, :, :filled], cache_v[:, :, :filled]
        # No dropout on the attention weights: SDPA's fused CPU kernel has none, and asking for it
        # builds the whole T x T matrix. The residual and embedding dropouts still regularise.
        y = kernels.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self.proj(y))


ACTIVATIONS = {"gelu": F.gelu, "relu2": kernels.relu_squared}


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.activation = ACTIVATIONS[config.mlp]
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = kernels.Dropout(config.dropout)

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


class LanguageModel(nn.Module):
    """What both models share: their config, their size, their cost, and generation's KV cache."""

    config: GPTConfig
    config_class: ClassVar[type] = GPTConfig  # what a checkpoint's model settings build

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def memory_needed(cls, config: GPTConfig, batch_size: int, training: bool) -> int:
        """Rough bytes to run (training: to train) a model of config on batch_size sequences, known
        before it is built: float32 weights (training: with their gradients and AdamW's two
        moments), and generation's KV cache, or the activations the backward pass keeps (about
        20 floats per channel and layer) and the logits."""
        C, T, L, V = config.n_embd, config.block_size, config.n_layer, config.vocab_size
        weights = 4 * cls.parameter_count(config)
        if not training:
            return weights + 2 * 4 * L * batch_size * T * C
        return 4 * weights + batch_size * T * (20 * 4 * L * C + 3 * 4 * V)

    def new_kv_cache(self, batch_size: int, device) -> KVCache:
        """An empty cache for generation, in the dtype attention reads (machine.cache_dtype). The
        bigram uses only its count of positions."""
        return KVCache(self.config, batch_size, device, machine.cache_dtype(self))


class GPTLanguageModel(LanguageModel):
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
        if config.residual_scalars:  # each block reads resid * x + x0 * (the embedding)
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        self.dropout = kernels.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.apply(self._init_weights)
        # Residual projections add up over 2 * n_layer branches: scale them down (GPT-2).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def parameter_count(config: GPTConfig) -> int:
        """The parameters of a model of config, counted without building it."""
        C, L, V = config.n_embd, config.n_layer, config.vocab_size
        norm = 2 * C if config.norm == "layer" and config.bias else C  # gain (and bias)
        biases = 9 * C if config.bias else 0  # qkv 3C, proj C, fc 4C, proj C
        block = 2 * norm + 12 * C * C + biases
        positions = 0 if config.rope else config.block_size * C
        scalars = 2 * L if config.residual_scalars else 0
        head = V * C + (V if config.bias else 0)
        return V * C + positions + scalars + L * block + norm + head

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per weight (forward and backward), less the position table
        (a lookup, not a product), plus attention's scores and mix (PaLM, appendix B)."""
        c = self.config
        products = self.num_parameters() - (0 if c.rope else c.block_size * c.n_embd)
        return 6 * products + 12 * c.n_layer * c.n_embd * c.block_size

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
        x = x0 = self.dropout(x)
        for i, block in enumerate(self.blocks):
            if self.config.residual_scalars:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, kv_cache.layers[i] if kv_cache is not None else None, start, rope)
        if kv_cache is not None:
            kv_cache.length += T
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


class BigramLanguageModel(LanguageModel):
    """The baseline: the next character depends on the current one only, via a lookup table."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.logits_table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.normal_(self.logits_table.weight, std=0.02)  # start near uniform: loss ln(vocab)

    @staticmethod
    def parameter_count(config: GPTConfig) -> int:
        return config.vocab_size**2

    def flops_per_token(self) -> int:
        return 6 * self.num_parameters()

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        logits = self.logits_table(idx)
        if kv_cache is not None:
            kv_cache.length += idx.shape[1]  # nothing to remember: only positions advance
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


MODEL_TYPES = {"gpt": GPTLanguageModel, "bigram": BigramLanguageModel}  # a checkpoint's model_type


# -----------------------------------------------------------------------------
# Generation


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of logits (B, V); temperature 0 means always the likeliest. Any
    temperature > 0 and top_p > 0 give a distribution, however small they are."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float()
    # The best logit becomes 0 before the division: a tiny temperature then sends the others to
    # -inf and the best keeps probability 1, where logits / temperature alone would give inf.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of tokens whose probabilities add up to top_p (nucleus sampling).
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop_sorted[:, 0] = False  # the best always stays (a top_p below float32's range is 0)
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
    block_size, rolling = model.config.block_size, model.config.rope
    context, cache = prompt, None
    for _ in range(num_tokens):
        if not use_kv_cache:
            logits, _ = model(context[:, -block_size:])
        elif cache is None or (cache.length == cache.capacity and not rolling):
            keep = block_size if cache is None else max(1, block_size // 2)
            cache = model.new_kv_cache(context.shape[0], context.device)
            logits, _ = model(context[:, -keep:], kv_cache=cache)
        else:
            with machine.matrix_vector_kernels(model, context.shape[0]):
                logits, _ = model(context[:, -1:], kv_cache=cache)
        next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        context = torch.cat([context, next_token], dim=1)
        if context.shape[1] > 2 * block_size:  # only the last window is ever read again
            context = context[:, -block_size:]
        yield next_token


@torch.no_grad()
def training_sample(model: nn.Module, vocab: list[str], num_chars: int, seed: int, device) -> str:
    """What the model writes now: a continuation of the default prompt at temperature 0.8, with
    the same seed at every evaluation, so that the samples of one run show what changed."""
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.tensor([[vocab.index(corpus.default_prompt(vocab))]], device=device)
    model.eval()
    steps = generate_tokens(model, prompt, num_chars, temperature=0.8, generator=generator)
    text = corpus.decode([step.item() for step in steps], vocab)
    model.train()
    return text


# -----------------------------------------------------------------------------
# Training: the hyperparameters
# Two architectures: `classic` is the 2019 recipe of the original (GPT-2's model, AdamW, cosine
# schedule); `modern` adds what the field learned since, each piece kept because it measured
# better here (docs/results.md).
ARCHITECTURES = {
    "classic": dict(rope=False, norm="layer", qk_norm=False, mlp="gelu", bias=True,
                    split_qkv=False, residual_scalars=False,
                    optimizer="adamw", schedule="cosine"),
    "modern": dict(rope=True, norm="rms", qk_norm=True, mlp="relu2", bias=False,
                   split_qkv=True, residual_scalars=False,
                   optimizer="muon", schedule="wsd"),
}  # fmt: skip
# `gpu` is the reference run: TrainConfig's defaults. The CPU presets train for ten minutes
# (max_iters is a cap); a new CPU run takes the one predicted to end lowest from its step times on
# that machine (scratchgpt/machine.py): `cpu` where they are fast, the narrower, deeper
# `cpu-float32` where they are slow (most laptops; docs/cpu-classes.md).
# Their warm-down takes the last 65% of the run down to 1/20 of the peak learning rate: longer and
# lower than the usual 45% and 1/10, it measured better in ten minutes (docs/results.md).
CPU_TRAINING = dict(block_size=128, batch_size=32, dropout=0.1, max_minutes=10, eval_iters=20,
                    lr=2e-3, min_lr=1e-4, decay_share=0.65, **ARCHITECTURES["modern"])  # fmt: skip
PRESETS = {
    "gpu": ARCHITECTURES["classic"],
    "cpu": dict(n_layer=4, n_head=4, n_embd=256, max_iters=2300, **CPU_TRAINING),
    "cpu-float32": dict(n_layer=6, n_head=4, n_embd=128, max_iters=5000, **CPU_TRAINING),
}


@dataclass
class TrainConfig(GPTConfig):
    """A run's settings: the model's (GPTConfig), then how it trains. Each is a --flag."""

    dataset: str = setting(corpus.DEFAULT_DATASET, "default: shakespeare",
                           tuple(corpus.DATASET_FILES))  # fmt: skip
    data: str = setting("", "corpus: a UTF-8 text file, or a .rar for reddit")
    out: str = setting("", "checkpoint path (default checkpoints/<dataset>.pt)")
    preset: str = setting("gpu", "default: gpu on CUDA, else by CPU class", tuple(PRESETS))
    model_type: str = setting("gpt", "gpt (default) or the bigram baseline", tuple(MODEL_TYPES))
    clean: bool = setting(True, "--no-clean: the text exactly as written (CRLF, entities)")
    max_vocab: int = setting(reddit.DEFAULT_MAX_VOCAB, "reddit: characters kept; the rest: one")
    batch_size: int = setting(64, "sequences per micro-batch, per process")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    max_iters: int = setting(5000, "optimizer steps")
    eval_interval: int = setting(250, "steps between evaluations (and saves)")
    eval_iters: int = setting(200, "batches per split in an evaluation")
    optimizer: str = setting("adamw", "muon: Muon for the blocks' matrices", ("adamw", "muon"),
                             switch=True)  # fmt: skip
    lr: float = setting(1e-3, "peak learning rate (AdamW's)")
    muon_lr: float = setting(0.02, "Muon's peak learning rate")
    min_lr: float = setting(1e-4, "learning rate at the end (Muon's falls in proportion)")
    schedule: str = setting("cosine", "after warmup: cosine, or wsd (flat, then a line)",
                            ("cosine", "wsd"), switch=True)  # fmt: skip
    warmup_iters: int = setting(100, "steps of linear warmup")
    decay_share: float = setting(0.45, "wsd: the last share of the run the learning rate falls")
    weight_decay: float = setting(0.1, "weight decay of the matrices (AdamW and Muon)")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: off)")
    max_minutes: float = setting(0.0, "time budget: the schedule fits it (0: none)")
    device: str = setting("auto", "default: auto", ("auto", "cpu", "cuda", "mps"))
    dtype: str = setting("auto", "autocast precision; auto: bf16 where native",
                         ("auto", "float32", "bfloat16", "float16"))  # fmt: skip
    compile: bool = setting(False, "use torch.compile")
    backend: str = setting("", "torchrun: distributed backend", ("nccl", "gloo"))
    seed: int = setting(1337, "random seed")
    init_from: str = setting("", "fine-tune: start from this trained checkpoint's weights")
    teacher: tuple = setting((), "distil: also learn these trained checkpoints' predictions "
                             "(several: their ensemble's)", many=True)  # fmt: skip
    distill_weight: float = setting(0.45, "distil: the teacher's share of the loss")
    distill_temperature: float = setting(1.2, "distil: both predictions softened by this")
    sample_chars: int = setting(200, "characters of sample text at each evaluation (0: none)")
    exhaustive_eval: bool = setting(False, "score every val character at each evaluation too")
    # The named settings a run starts from (--preset, --arch); not settings themselves.
    presets: ClassVar[dict[str, dict]] = PRESETS
    architectures: ClassVar[dict[str, dict]] = ARCHITECTURES
    model_types: ClassVar[dict[str, type]] = MODEL_TYPES  # what a checkpoint may hold


# -----------------------------------------------------------------------------
# Training: one step (its batches: scratchgpt/dataloader.py; its update: scratchgpt/optimizers.py)


def step_seed(seed: int, rank: int, step: int) -> int:
    """Each step's randomness (batches, dropout masks) comes from (seed, rank, step) alone:
    a resumed run needs no saved RNG state to continue exactly, and each rank draws its own data."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])


def run_progress(it: int, elapsed: float, config: TrainConfig) -> float:
    """The share of the run done (0..1): of its iterations, or of its time budget if that is
    further along. The learning rate schedule and the progress bar both follow it."""
    by_time = elapsed / (config.max_minutes * 60) if config.max_minutes else 0.0
    return min(1.0, max(it / config.max_iters, by_time))


def micro_batch_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: torch.dtype,
    teacher: distillation.Teacher | None = None,
) -> torch.Tensor:  # fmt: skip
    """The forward pass of one micro-batch, under autocast: its mean loss, mixed with the
    teacher's when there is one."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    with autocast(device, dtype):
        logits, loss = model(x, y)
        return loss if teacher is None else teacher.mixed_loss(loss, logits, x)


def train_on_batches(
    model: nn.Module, optimizers: list, scaler: torch.amp.GradScaler, micro_batches: list,
    grad_clip: float, device: torch.device, dtype: torch.dtype,
    teacher: distillation.Teacher | None = None,
) -> torch.Tensor:  # fmt: skip
    """One optimizer step over grad-accum micro-batches; returns the last micro-batch's loss.
    Under DDP, gradients are averaged across processes once, on the last micro-batch only."""
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = nullcontext() if last or not isinstance(model, DDP) else model.no_sync()
        with sync:
            loss = micro_batch_loss(model, x, y, device, dtype, teacher)
            scaler.scale(loss / len(micro_batches)).backward()  # the step follows their mean
    apply_gradients(model, optimizers, scaler, grad_clip)
    return loss


# -----------------------------------------------------------------------------
# Training: the run


@dataclass
class Run:
    """A training run: its model and optimizers, the data, and where it stands."""

    config: TrainConfig
    model: nn.Module
    optimizers: list
    data: corpus.Corpus
    splits: dict  # "train" and "val" token arrays
    device: torch.device
    dtype: torch.dtype
    ddp: distributed.Distributed
    step: int = 0
    elapsed_before: float = 0.0  # seconds trained before a --resume
    best_val_loss: float = math.inf
    best_step: int = 0
    saved: bool = False  # the checkpoint and its log exist: a new run's first save creates them
    bad_loss: float | None = None  # a NaN or infinite loss: training diverged
    progress: runlog.Progress | None = None  # the console's progress bar, while it trains
    picture: runlog.RunPicture | None = None  # the losses drawn beside the checkpoint
    teacher: distillation.Teacher | None = None  # distillation's (--teacher)

    @property
    def tokens_per_step(self) -> int:
        c = self.config
        return c.batch_size * c.block_size * c.grad_accum * self.ddp.world_size


def start_run(
    config: TrainConfig, data: corpus.Corpus, device: torch.device, ddp: distributed.Distributed,
    resume: dict | None = None, init_from: dict | None = None,
) -> Run:  # fmt: skip
    """A run ready to train: a fresh model, or the weights a fine-tune starts from (init_from),
    or a saved run's whole state (resume)."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    config = replace(config, vocab_size=len(data.vocab))
    model_class = MODEL_TYPES[config.model_type]
    machine.check_memory(model_class, config, config.batch_size, training=True, device=device)
    model = model_class(GPTConfig(**model_settings(config))).to(device)
    train_data, val_data = corpus.split_corpus(data.tokens)
    dtype = machine.resolve_dtype(config.dtype, device)
    optimizers = make_optimizers(model, config, device)
    run = Run(config, model, optimizers, data, {"train": train_data, "val": val_data}, device,
              dtype, ddp)  # fmt: skip
    if init_from is not None:
        checkpoint.start_from(init_from, model, config.init_from)
    if resume is not None:
        state = checkpoint.restore_training(resume, model, optimizers, config.out)
        run.step, run.best_val_loss, run.elapsed_before = state
        run.best_step, run.saved = run.step, True
    run.teacher = distillation.load_teacher(config, data.vocab, device, MODEL_TYPES)
    return run


def evaluate(run: Run, elapsed: float) -> dict:
    """The losses on both splits now, as a log record; with the exhaustive val loss and a
    sample when asked, unless the model diverged."""
    c, model = run.config, run.model
    losses = scoring.estimate_loss(model, run.splits, c, run.device, run.dtype)
    val = losses["val"]
    record = {"iter": run.step, "train_loss": losses["train"], "val_loss": val,
              "val_bpc": val / scoring.LN2, "lr": run.optimizers[0].param_groups[0]["lr"],
              "tokens_per_sec": run.progress.tokens_per_sec, "elapsed_s": elapsed}  # fmt: skip
    if not math.isfinite(val):
        return record
    if c.exhaustive_eval:
        loss = scoring.exhaustive_val_loss(
            model, run.splits["val"], c.block_size, run.device, run.dtype
        )
        record |= {"exhaustive_val_loss": loss, "exhaustive_val_bpc": loss / scoring.LN2}
    if c.sample_chars:
        with autocast(run.device, run.dtype):
            record["sample"] = training_sample(model, run.data.vocab, c.sample_chars, c.seed,
                                               run.device)  # fmt: skip
    return record


def evaluate_and_save(run: Run, elapsed: float) -> None:
    """Evaluate, print the figures and keep the model if it is the best so far; a loss that is
    not finite flags the run as diverged (it is logged, never saved)."""
    record = evaluate(run, elapsed)
    run.progress.write(runlog.evaluation_lines(record))
    runlog.save_if_best(run, record)
    if not math.isfinite(record["val_loss"]):
        run.bad_loss = record["val_loss"]


def scheduled_step(
    run: Run, model: nn.Module, scaler: torch.amp.GradScaler, elapsed: float
) -> torch.Tensor:
    """This step of the run: the schedule's learning rate, the step's seed (dropout) and batches,
    then train_on_batches; returns its loss."""
    config = run.config
    scale = lr_scale(run_progress(run.step, elapsed, config), run.step, config)
    set_learning_rates(run.optimizers, config, scale)
    seed = step_seed(config.seed, run.ddp.rank, run.step)
    torch.manual_seed(seed)  # dropout masks
    batches = torch.Generator().manual_seed(seed)
    split = run.splits["train"]
    micro = [dataloader.get_batch(split, config, batches) for _ in range(config.grad_accum)]
    loss = train_on_batches(model, run.optimizers, scaler, micro, config.grad_clip, run.device,
                            run.dtype, run.teacher)  # fmt: skip
    run.step += 1
    return loss


def train(run: Run, stop: threading.Event) -> str | None:
    """Train until max_iters, the time budget or a stop request (the first Ctrl-C), evaluating
    and saving every eval_interval steps and at the end. Returns the summary line (on rank 0)."""
    c, ddp = run.config, run.ddp
    model = torch.compile(run.model) if c.compile else run.model
    model = distributed.distributed_model(model, ddp, run.device)
    scaler = make_scaler(run.device, run.dtype)
    start = time.perf_counter() - run.elapsed_before
    done = run_progress(run.step, run.elapsed_before, c)
    run.progress = runlog.Progress(done, run.step, run.tokens_per_step, show=ddp.is_main)
    run.picture = runlog.RunPicture(runlog.picture_path(c.out), note=run.progress.write)
    last_eval, why = run.step, f"{c.max_iters} iterations done"
    with closing(run.progress):  # closed, also by an error: it ends its line
        while run.step < c.max_iters:
            elapsed = time.perf_counter() - start
            out_of_time = c.max_minutes > 0 and elapsed >= c.max_minutes * 60
            stopping = stop.is_set() or out_of_time
            halt, diverged, elapsed = distributed.agree(
                stopping, run.bad_loss is not None, elapsed, ddp, run.device
            )
            if halt and not diverged:
                run.progress.advance(run_progress(run.step, elapsed, c))  # evaluations count too
                why = "interrupted" if stop.is_set() else f"{c.max_minutes:g} minutes spent"
                run.progress.write(
                    f"stopping at iter {run.step} ({why}): evaluating, saving if best"
                )
            if halt or diverged:
                break
            loss = scheduled_step(run, model, scaler, elapsed)
            run.progress.advance(run_progress(run.step, time.perf_counter() - start, c))
            if run.step % 10 == 0:  # reading the loss waits for the GPU: not every step
                loss = loss.item()
                run.progress.report(run.step, loss, run.optimizers)
                run.bad_loss = None if math.isfinite(loss) else loss
            if run.step % c.eval_interval == 0 and ddp.is_main and run.bad_loss is None:
                evaluate_and_save(run, time.perf_counter() - start)
                last_eval = run.step
        if run.step != last_eval and ddp.is_main and run.bad_loss is None:
            evaluate_and_save(run, time.perf_counter() - start)
    del model  # DDP's reference cycles hold the process group: free them before leaving it
    distributed.leave_distributed(ddp)
    return runlog.final_score(run, why) if ddp.is_main else None


# -----------------------------------------------------------------------------
# The command: python bigram.py


def main(argv: list[str] | None = None) -> int:
    """python bigram.py: the command line (scratchgpt/train_cli.py) reads the flags as
    TrainConfig's and checks them, the corpus and the files; it builds the run with start_run and
    trains it with train, after timing step_timer's steps to pick a CPU's preset. It is handed
    them rather than importing this file: the plumbing never depends on the model file."""
    return train_cli.main(argv, TrainConfig, start_run, train, step_timer)


def step_timer(config: TrainConfig, data: corpus.Corpus, device: torch.device) -> Callable:
    """One training step of config's run, as train() takes it: what the machine's choice times."""
    run = start_run(config, data, device, distributed.Distributed())
    return partial(scheduled_step, run, run.model, make_scaler(device, run.dtype), 0.0)


if __name__ == "__main__":
    setup_console()
    raise SystemExit(main())
