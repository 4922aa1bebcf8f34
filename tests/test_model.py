"""The model: configuration checks, its size and cost, causality, the KV cache, sampling."""

import itertools

import pytest
import torch

from bigram import (
    ARCHITECTURES,
    BigramLanguageModel,
    GPTConfig,
    GPTLanguageModel,
    KVCache,
    generate_tokens,
    model_settings,
    sample_next,
)

CONFIG = GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
MODERN_SWITCHES = {k: v for k, v in ARCHITECTURES["modern"].items() if k in model_settings(CONFIG)}
MODERN = GPTConfig(**{**vars(CONFIG), **MODERN_SWITCHES})
SCALARS = GPTConfig(**{**vars(MODERN), "residual_scalars": True})


@pytest.fixture(params=[CONFIG, MODERN, SCALARS], ids=["classic", "modern", "residual-scalars"])
def model(request) -> GPTLanguageModel:
    torch.manual_seed(0)
    model = GPTLanguageModel(request.param).eval()
    if request.param.residual_scalars:  # off their neutral start, so that they count
        with torch.no_grad():
            model.resid_lambdas.fill_(0.8)
            model.x0_lambdas.fill_(0.5)
    return model


def test_reference_configuration_has_10_8m_parameters():
    model = GPTLanguageModel(GPTConfig(vocab_size=65))
    assert model.num_parameters() == 10_795_841


def test_modern_switches_drop_the_position_table_and_the_biases():
    model = GPTLanguageModel(GPTConfig(vocab_size=65, **MODERN_SWITCHES))
    names = {name for name, _ in model.named_parameters()}
    assert not any("position" in name or name.endswith(".bias") for name in names)
    # 10,795,841 less the position table (256 x 384), 6 x 9 x 384 biases, 6 x 2 + 1 LayerNorm
    # biases and the head's 65: RMSNorm keeps one gain vector per norm.
    assert model.num_parameters() == 10_795_841 - 256 * 384 - 6 * 9 * 384 - 13 * 384 - 65


@pytest.mark.parametrize("base", [CONFIG, MODERN], ids=["classic", "modern"])  # biases or none
def test_split_qkv_computes_what_one_qkv_matrix_with_the_same_weights_does(base):
    torch.manual_seed(0)
    split = GPTLanguageModel(GPTConfig(**{**vars(base), "split_qkv": True})).eval()
    for p in split.parameters():  # random biases too, so that stacking them is checked
        torch.nn.init.normal_(p, std=0.1)
    fused = GPTLanguageModel(GPTConfig(**{**vars(base), "split_qkv": False})).eval()
    state = split.state_dict()
    kinds = ("weight", "bias") if base.bias else ("weight",)
    for i in range(base.n_layer):
        for kind in kinds:  # queries, then keys, then values: qkv's row order
            parts = [state.pop(f"blocks.{i}.attn.{name}.{kind}") for name in "qkv"]
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    fused.load_state_dict(state)  # strict: the only difference is how the three are stored
    idx = torch.randint(base.vocab_size, (2, base.block_size))
    torch.testing.assert_close(split(idx)[0], fused(idx)[0])
    assert split.num_parameters() == fused.num_parameters()


def test_split_qkv_gives_one_token_what_the_joined_product_gives():
    # Batch-1 generation takes three products; every other input, one of the joined matrices.
    torch.manual_seed(0)
    attention = GPTLanguageModel(MODERN).blocks[0].attn
    x = torch.randn(2, 1, MODERN.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(attention.qkv_product(x[:1]), attention.qkv_product(x)[:1])


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_embd=30, n_head=4), "divisible by n_head"),
        (dict(n_layer=0), "n_layer must be at least 1"),
        (dict(dropout=1.0), "dropout"),
        (dict(norm="batch"), "norm must be one of layer, rms"),
        (dict(mlp="swish"), "mlp must be one of gelu, relu2"),
        (dict(rope=True, n_embd=18, n_head=2), "even head size"),
    ],
)
def test_impossible_config_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):  # a plain error: the model is not a command
        GPTConfig(**{**vars(CONFIG), **changes})


def test_future_tokens_never_change_earlier_logits(model):
    idx = torch.randint(CONFIG.vocab_size, (1, CONFIG.block_size))
    logits, _ = model(idx)
    for t in range(CONFIG.block_size):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % CONFIG.vocab_size
        new_logits, _ = model(changed)
        torch.testing.assert_close(new_logits[:, :t], logits[:, :t])
        assert not torch.allclose(new_logits[:, t], logits[:, t])


def test_kv_cache_gives_the_same_logits_as_the_full_context(model):
    idx = torch.randint(CONFIG.vocab_size, (3, CONFIG.block_size))
    full_logits, _ = model(idx)
    cache = KVCache(model.config, batch_size=3, device="cpu", dtype=torch.float32)
    prompt_logits, _ = model(idx[:, :4], kv_cache=cache)  # a prompt, then one token at a time
    step_logits = [prompt_logits] + [
        model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(4, 12)
    ]
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full_logits)


def test_generation_with_and_without_cache_agrees_inside_the_window(model):
    prompt = torch.randint(CONFIG.vocab_size, (2, 3))
    runs = []
    for use_kv_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        steps = generate_tokens(model, prompt, 9, use_kv_cache=use_kv_cache, generator=generator)
        runs.append(torch.cat(list(steps), dim=1))
    assert torch.equal(runs[0], runs[1])


def test_cache_slides_by_half_a_window_past_block_size():
    torch.manual_seed(0)
    model = GPTLanguageModel(CONFIG).eval()  # learned positions: the cache must be rebuilt
    prompt = torch.randint(CONFIG.vocab_size, (1, CONFIG.block_size))
    steps = list(generate_tokens(model, prompt, 3, temperature=0))
    # The first token comes from the full window; the second finds the cache full and rebuilds
    # it from the last block_size // 2 tokens, which is exactly what it then predicts from.
    context = torch.cat([prompt, steps[0]], dim=1)
    expected = model(context[:, -CONFIG.block_size // 2 :])[0][:, -1].argmax(-1, keepdim=True)
    assert torch.equal(steps[1], expected)
    assert len(list(generate_tokens(model, prompt, 40))) == 40


def test_rotary_cache_rolls_past_block_size_with_a_full_window():
    # With one layer, keys and values come straight from the embeddings, so a rolling cache must
    # give exactly what the whole last window gives, however far past block_size it has gone.
    torch.manual_seed(0)
    model = GPTLanguageModel(GPTConfig(**{**vars(MODERN), "n_layer": 1})).eval()
    tokens = torch.randint(MODERN.vocab_size, (2, 3 * MODERN.block_size + 5))
    cache = KVCache(model.config, batch_size=2, device="cpu", dtype=torch.float32)
    model(tokens[:, :4], kv_cache=cache)
    for t in range(4, tokens.shape[1]):
        step_logits = model(tokens[:, t : t + 1], kv_cache=cache)[0][:, -1]
        window_logits = model(tokens[:, max(0, t + 1 - MODERN.block_size) : t + 1])[0][:, -1]
        torch.testing.assert_close(step_logits, window_logits)
    assert cache.length == tokens.shape[1]


def test_rotary_generation_never_rebuilds_its_cache():
    torch.manual_seed(0)
    model = GPTLanguageModel(MODERN).eval()
    widths = []  # tokens fed to each forward pass
    model.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    steps = list(generate_tokens(model, torch.zeros((1, 3), dtype=torch.long), 40))
    assert len(steps) == 40 and widths == [3] + [1] * 39  # one prompt pass, then a token at a time


def test_classic_model_refuses_positions_past_its_table():
    torch.manual_seed(0)
    model = GPTLanguageModel(CONFIG).eval()
    cache = KVCache(CONFIG, batch_size=1, device="cpu", dtype=torch.float32)
    model(torch.zeros((1, CONFIG.block_size), dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceed block_size"):
        model(torch.zeros((1, 1), dtype=torch.long), kv_cache=cache)


def test_bigram_model_predicts_from_the_last_character_only():
    torch.manual_seed(0)
    model = BigramLanguageModel(CONFIG)
    idx = torch.tensor([[1, 2, 3], [4, 5, 3]])
    logits, loss = model(idx, targets=idx)
    torch.testing.assert_close(logits[0, -1], logits[1, -1])
    assert loss is not None and loss.item() > 0


def test_temperature_zero_and_top_k_one_pick_the_likeliest():
    logits = torch.tensor([[0.1, 3.0, 0.2, 2.9], [5.0, 0.0, 0.0, 0.0]])
    likeliest = torch.tensor([[1], [0]])
    assert torch.equal(sample_next(logits, temperature=0), likeliest)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        assert torch.equal(sample_next(logits, top_k=1, generator=generator), likeliest)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, top_p=0.75, generator=generator).item() for _ in range(200)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.75; the tail is never drawn


@pytest.mark.parametrize("settings", [dict(temperature=1e-40), dict(top_p=1e-320),
                                      dict(temperature=1e-40, top_p=1e-320, top_k=2)])  # fmt: skip
def test_the_smallest_settings_still_give_a_distribution(settings):
    # Below float32's range a temperature or top-p is 0 once converted: each must still mean
    # "the likeliest", never inf or nan probabilities.
    logits = torch.tensor([[0.1, 3.0, 0.2, 2.9], [5.0, 0.0, 0.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(
        sample_next(logits, generator=generator, **settings), torch.tensor([[1], [0]])
    )


def test_cached_generation_works_with_a_one_character_context():
    torch.manual_seed(0)
    model = GPTLanguageModel(GPTConfig(**{**vars(CONFIG), "block_size": 1})).eval()
    steps = list(generate_tokens(model, torch.zeros((1, 1), dtype=torch.long), 5, temperature=0))
    assert len(steps) == 5


def test_residual_scalars_start_as_the_model_without_them():
    torch.manual_seed(0)
    plain = GPTLanguageModel(MODERN).eval()
    torch.manual_seed(0)
    mixed = GPTLanguageModel(SCALARS).eval()
    missing, _ = mixed.load_state_dict(plain.state_dict(), strict=False)  # the shared weights
    assert set(missing) == {"resid_lambdas", "x0_lambdas"}
    idx = torch.randint(0, 11, (2, 12))
    torch.testing.assert_close(mixed(idx)[0], plain(idx)[0])  # resid 1, x0 0: the plain stream


SWITCHES = ("bias", "rope", "norm", "qk_norm", "mlp", "split_qkv", "residual_scalars")
SWITCH_VALUES = {"norm": ("layer", "rms"), "mlp": ("gelu", "relu2")}


@pytest.mark.parametrize(
    "values", list(itertools.product(*(SWITCH_VALUES.get(s, (False, True)) for s in SWITCHES)))
)
def test_the_parameter_count_known_before_building_is_the_built_models(values):
    # memory_needed refuses a model too large before it is built: its count must not drift
    # from the model when a switch is added or changed.
    config = GPTConfig(**{**vars(CONFIG), **dict(zip(SWITCHES, values, strict=True))})
    assert GPTLanguageModel.parameter_count(config) == GPTLanguageModel(config).num_parameters()
    bigram = BigramLanguageModel(config)
    assert BigramLanguageModel.parameter_count(config) == bigram.num_parameters()


def test_training_flops_follow_the_architecture():
    classic = GPTLanguageModel(GPTConfig(vocab_size=65))
    modern_switches = {k: v for k, v in ARCHITECTURES["modern"].items()
                       if k in model_settings(GPTConfig())}  # fmt: skip
    modern = GPTLanguageModel(GPTConfig(vocab_size=65, **modern_switches))
    attention = 12 * 6 * 384 * 256
    position_table = 256 * 384
    classic_count = classic.num_parameters()
    assert classic.flops_per_token() == 6 * (classic_count - position_table) + attention
    assert modern.flops_per_token() == 6 * modern.num_parameters() + attention
