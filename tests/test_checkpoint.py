"""Checkpoints: round trip, atomic writes that survive a kill, and refusal of pickled code."""

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from support import REPO

from bigram import MODEL_TYPES, GPTConfig, GPTLanguageModel
from scratchgpt.checkpoint import (
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    save_checkpoint,
)
from scratchgpt.cli import UserError


def make_checkpoint(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)
    model = GPTLanguageModel(config)
    return {
        "model_args": vars(config) | {"model_type": "gpt"},
        "vocab": list("abcde"),
        "model": model.state_dict(),
        "iter": seed,
        "best_val_loss": 1.5,
    }


def test_round_trip_restores_the_same_model(tmp_path):
    checkpoint = make_checkpoint()
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "model.pt"), MODEL_TYPES).eval()
    original = model_from_checkpoint(checkpoint, MODEL_TYPES).eval()
    idx = torch.tensor([[0, 1, 2, 3]])
    torch.testing.assert_close(model(idx)[0], original(idx)[0])
    assert list(tmp_path.iterdir()) == [tmp_path / "model.pt"]  # no temporary file left behind


class RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').close()",))


def test_checkpoint_carrying_pickled_code_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(make_checkpoint() | {"vocab": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to load .* pickled code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the file really does carry code
    assert (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "damage", [lambda b: b[: len(b) // 2], lambda b: b"\x00" * 100 + b[100:], lambda b: b""]
)
def test_truncated_or_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(), path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_a_sparse_terabyte_checkpoint_is_a_clear_error_not_a_memory_error(tmp_path):
    path = tmp_path / "huge.pt"
    with path.open("wb") as f:
        f.truncate(1 << 40)  # no disk taken; read whole, it would fill the memory
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a ScratchGPT checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    pickle.dump([1, 2], (tmp_path / "list.pt").open("wb"))
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "list.pt")


SAVE_FOREVER = """
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from scratchgpt.checkpoint import save_checkpoint
big = {"iter": 0, "model_args": {}, "vocab": [], "best_val_loss": 0.0}
i = 0
while True:
    i += 1
    weights = {"w": torch.full((2_000_000,), float(i))}
    save_checkpoint(big | {"iter": i, "model": weights}, Path(sys.argv[1]))
    print("saved", i, flush=True)
"""


def test_killing_a_process_while_it_saves_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(make_checkpoint(), path)
    command = [sys.executable, "-c", SAVE_FOREVER, str(path), str(REPO)]
    for delay in (0.0, 0.02, 0.05, 0.1, 0.15):  # after its first save: during a later one
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().startswith("saved")
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        checkpoint = load_checkpoint(path)  # one of the child's saves: complete and consistent
        assert checkpoint["iter"] > 0 and torch.all(checkpoint["model"]["w"] == checkpoint["iter"])


@pytest.mark.parametrize("call", [os.system, eval, subprocess.Popen, getattr])
@pytest.mark.parametrize("raw_pickle", [False, True])
def test_every_kind_of_pickled_call_is_named_as_code(tmp_path, call, raw_pickle):
    class Payload:
        def __reduce__(self):
            return (call, ("true",))

    path = tmp_path / "evil.pt"
    if raw_pickle:  # a plain pickle, not torch's zip format
        path.write_bytes(pickle.dumps(make_checkpoint() | {"vocab": Payload()}, protocol=0))
    else:
        torch.save(make_checkpoint() | {"vocab": Payload()}, path)
    with pytest.raises(UserError, match="refusing to load .* pickled code") as error:
        load_checkpoint(path)
    assert call.__name__ in str(error.value)


def test_growing_the_vocabulary_keeps_the_trained_rows():
    small = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)
    trained = GPTLanguageModel(small).state_dict()
    grown = GPTLanguageModel(GPTConfig(**{**vars(small), "vocab_size": 7}))
    fresh_rows = grown.token_embedding.weight[5:].clone()
    load_weights(grown, trained, "trained.pt", old_vocab=5)
    assert torch.equal(grown.token_embedding.weight[:5], trained["token_embedding.weight"])
    assert torch.equal(grown.lm_head.weight[:5], trained["lm_head.weight"])
    assert torch.equal(grown.token_embedding.weight[5:], fresh_rows)  # new characters: as trained
    assert torch.equal(grown.blocks[0].attn.qkv.weight, trained["blocks.0.attn.qkv.weight"])
    wider = GPTLanguageModel(GPTConfig(**{**vars(small), "n_embd": 16}))
    with pytest.raises(UserError, match="weights do not fit"):  # only the vocabulary grows
        load_weights(wider, trained, "trained.pt", old_vocab=5)


@pytest.mark.parametrize("switch", ["pair_embedding", "value_embeddings"])
def test_a_checkpoint_with_a_removed_switch_off_loads_and_with_it_on_is_refused(tmp_path, switch):
    saved = make_checkpoint()
    # switches measured, then removed
    off = {"pair_embedding": False, "logit_cap": 0.0, "value_embeddings": False}
    save_checkpoint(saved | {"model_args": saved["model_args"] | off}, tmp_path / "off.pt")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "off.pt"), MODEL_TYPES).eval()
    idx = torch.tensor([[0, 1, 2, 3]])
    torch.testing.assert_close(
        model(idx)[0], model_from_checkpoint(saved, MODEL_TYPES).eval()(idx)[0]
    )
    on = saved["model_args"] | {switch: True}
    save_checkpoint(saved | {"model_args": on}, tmp_path / "on.pt")
    with pytest.raises(UserError, match=f"unknown setting '{switch}'"):
        model_from_checkpoint(
            load_checkpoint(tmp_path / "on.pt"), MODEL_TYPES, path=tmp_path / "on.pt"
        )
