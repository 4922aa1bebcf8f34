"""ensemble.py: several models writing as one, and MODEL.py --checkpoint with several paths."""

import numpy as np
import pytest
import torch
from support import TINY_RUN, assert_clean_error, main_error, run_script, write_corpus

import bigram
import MODEL
from scratchgpt import scoring
from scratchgpt.checkpoint import load_checkpoint, model_from_checkpoint
from scratchgpt.ensemble import Ensemble


def gpt(seed: int, **shape) -> bigram.GPTLanguageModel:
    torch.manual_seed(seed)
    settings = dict(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8) | shape
    model = bigram.GPTLanguageModel(bigram.GPTConfig(**settings)).eval()
    for p in model.parameters():  # weights large enough that the members disagree clearly
        p.data.normal_(0, 0.5)
    return model


def greedy(model, prompt: list[int], num_tokens: int, use_kv_cache: bool) -> list[int]:
    steps = bigram.generate_tokens(
        model, torch.tensor([prompt]), num_tokens, temperature=0.0, use_kv_cache=use_kv_cache
    )
    return [step.item() for step in steps]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny models of the same plays from different seeds, and one of other characters."""
    folder = tmp_path_factory.mktemp("ensemble")
    plays = write_corpus(folder / "plays.txt")
    other = folder / "other.txt"
    other.write_text(plays.read_text(encoding="utf-8").upper(), encoding="utf-8")
    paths = {}
    for name, corpus, seed in (("a", plays, 1), ("b", plays, 2), ("other", other, 1)):
        paths[name] = folder / f"{name}.pt"
        flags = ["--max-iters", "30", "--eval-interval", "30", "--lr", "3e-2", "--seed", str(seed)]
        argv = ["--data", str(corpus), "--out", str(paths[name]), *flags, *TINY_RUN]
        assert bigram.main(argv) == 0
    return paths


def test_an_ensemble_predicts_the_mean_of_its_models_probabilities():
    models = [gpt(1), gpt(2, n_layer=2, n_embd=8, block_size=12)]
    idx = torch.randint(0, 11, (3, 8))
    logits, _ = Ensemble(models)(idx)
    expected = torch.stack([m(idx)[0].softmax(-1) for m in models]).mean(0)
    torch.testing.assert_close(logits.softmax(-1), expected)
    single = models[0](idx)[0].softmax(-1)
    assert (logits.softmax(-1) - single).abs().max() > 0.05  # not one member's answer


def test_an_ensembles_loss_is_the_loss_of_its_mean_probabilities():
    models = [gpt(1), gpt(2)]
    idx, targets = torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))
    _, loss = Ensemble(models)(idx, targets)
    mean = torch.stack([m(idx)[0].softmax(-1) for m in models]).mean(0)
    expected = -mean.gather(-1, targets[..., None]).log().mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("rope", [False, True])
def test_with_the_kv_cache_an_ensemble_writes_what_recomputing_writes(rope):
    # Within the shortest context, the cached and recomputed paths read the same characters.
    models = [gpt(1, rope=rope), gpt(2, rope=rope, block_size=12)]
    ensemble = Ensemble(models)
    assert greedy(ensemble, [1, 2, 3], 5, True) == greedy(ensemble, [1, 2, 3], 5, False)


@pytest.mark.parametrize("ropes", [(False, False), (True, True), (True, False)])
def test_an_ensemble_writes_past_its_shortest_context(ropes):
    # Members of contexts 8 and 12: every member's cache is refilled or rolls in time.
    models = [gpt(1, rope=ropes[0]), gpt(2, rope=ropes[1], block_size=12)]
    ensemble = Ensemble(models)
    assert ensemble.config.block_size == 8 and ensemble.config.rope == all(ropes)
    tokens = greedy(ensemble, [1], 40, True)
    assert len(tokens) == 40 and all(0 <= t < 11 for t in tokens)


def test_an_ensemble_scores_no_worse_than_its_models_on_average(trained):
    saved = [load_checkpoint(trained[name]) for name in ("a", "b")]
    models = [model_from_checkpoint(s, bigram.MODEL_TYPES).eval() for s in saved]
    text = write_corpus(trained["a"].with_suffix(".val.txt"), n_chars=3000, seed=7)
    vocab = saved[0]["vocab"]
    data = np.array([vocab.index(c) for c in text.read_text(encoding="utf-8")], dtype=np.uint16)

    def loss(model):
        return scoring.exhaustive_val_loss(model, data, 16, torch.device("cpu"), torch.float32)

    own = [loss(m) for m in models]
    assert own[0] != own[1]  # two different models
    assert loss(Ensemble(models)) <= sum(own) / 2  # the mean of -log p is at least -log(mean p)


def test_model_py_writes_with_several_checkpoints(trained):
    result = run_script(
        "MODEL.py", "--checkpoint", str(trained["a"]), str(trained["b"]), "--num-tokens", "50",
        "--seed", "3", "--weights", "float32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 1 + 50 + 1  # the default prompt, the text, a newline
    assert "ensemble: 2 models" in result.stderr


def test_an_ensemble_of_checkpoints_with_different_characters_is_refused(trained, capsys):
    argv = ["--checkpoint", str(trained["a"]), str(trained["other"]), "--num-tokens", "5"]
    error = main_error(MODEL.main, argv, capsys)
    assert "share a vocabulary" in error and str(trained["other"]) in error


def test_a_missing_member_is_named(trained, tmp_path):
    missing = tmp_path / "none.pt"
    result = run_script("MODEL.py", "--checkpoint", str(trained["a"]), str(missing))
    assert_clean_error(result, str(missing), "not found")
