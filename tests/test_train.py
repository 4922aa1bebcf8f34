"""Training: the loss falls, logs and checkpoints are written, and --resume continues exactly."""

import json
import os
import signal

import pytest
import torch
from support import REPO, TINY_RUN, write_corpus

import bigram
from bigram import load_checkpoint


def train(tmp_path, *flags: str) -> list[dict]:
    """Train in-process on the synthetic corpus; returns the JSONL evaluation log."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(corpus)
    out = tmp_path / "run.pt"
    argv = ["--data", str(corpus), "--out", str(out), *TINY_RUN, "--lr", "3e-3", *flags]
    assert bigram.main(argv) == 0
    return [json.loads(line) for line in bigram.log_path(out).read_text().splitlines()]


def test_loss_falls_on_a_small_corpus(tmp_path, capsys):
    log = train(tmp_path, "--max-iters", "60", "--eval-interval", "20", "--warmup-iters", "5")
    assert [r["iter"] for r in log] == [20, 40, 60]
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.3
    assert set(log[0]) == {"iter", "train_loss", "val_loss", "lr", "tokens_per_sec", "elapsed_s"}
    best = min(r["val_loss"] for r in log)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"best val loss {best:.4f} at iter 60 -> {tmp_path / 'run.pt'}"


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    train(tmp_path, "--max-iters", "4", "--eval-interval", "2")
    checkpoint = load_checkpoint(tmp_path / "run.pt")
    expected = {"model_args", "vocab", "model", "optimizer", "iter", "best_val_loss", "rng"}
    assert expected | {"config", "elapsed_s"} <= set(checkpoint)
    assert checkpoint["vocab"] == sorted(set((tmp_path / "corpus.txt").read_text()))
    assert checkpoint["config"]["n_embd"] == 16 and checkpoint["iter"] in (2, 4)


def test_bigram_baseline_trains_and_saves(tmp_path):
    flags = ["--max-iters", "30", "--eval-interval", "30", "--lr", "0.1", "--warmup-iters", "0"]
    log = train(tmp_path, "--model", "bigram", *flags)
    checkpoint = load_checkpoint(tmp_path / "run.pt")
    assert checkpoint["model_args"]["model_type"] == "bigram"
    assert log[-1]["val_loss"] < 2.5  # uniform guessing over 31 characters scores 3.43


def test_resume_continues_the_same_loss_curve(tmp_path, monkeypatch):
    flags = ["--max-iters", "20", "--eval-interval", "5", "--dropout", "0.1"]
    (tmp_path / "a").mkdir()
    uninterrupted = train(tmp_path / "a", *flags)

    # Press Ctrl-C during step 12 of a second run, then resume it with the same flags.
    calls = 0
    real_clip = torch.nn.utils.clip_grad_norm_

    def interrupt_at_step_12(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return real_clip(*args, **kwargs)

    (tmp_path / "b").mkdir()
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", interrupt_at_step_12)
    interrupted = train(tmp_path / "b", *flags)
    assert interrupted[-1]["iter"] == 12 and load_checkpoint(tmp_path / "b/run.pt")["iter"] == 12
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    resumed = train(tmp_path / "b", *flags, "--resume")

    def curve(log):
        return [(r["iter"], r["train_loss"], r["val_loss"]) for r in log if r["iter"] % 5 == 0]

    assert curve(resumed) == curve(uninterrupted)


def test_time_budget_stops_training_cleanly(tmp_path):
    log = train(
        tmp_path, "--max-iters", "100000", "--eval-interval", "1000", "--max-minutes", "0.05"
    )
    assert 0 < log[-1]["iter"] < 100000  # stopped by the 3-second budget, then evaluated
    assert load_checkpoint(tmp_path / "run.pt")["best_val_loss"] == min(r["val_loss"] for r in log)


def test_explicit_flags_override_the_preset():
    args = bigram.parse_args(["--preset", "gpu", "--n-layer", "2", "--lr", "0.01"])
    config = bigram.make_config(args, torch.device("cpu"), saved=None)
    assert (config.n_layer, config.lr) == (2, 0.01)
    assert (config.n_embd, config.block_size) == (384, 256)  # the rest comes from the preset


def test_cpu_preset_is_picked_without_a_gpu(capsys):
    config = bigram.make_config(bigram.parse_args([]), torch.device("cpu"), saved=None)
    assert config.preset == "cpu" and config.n_embd == bigram.PRESETS["cpu"]["n_embd"]


SHAKESPEARE = REPO / "data/input.txt"  # .ci/run copies the real corpus here


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="data/input.txt (Tiny Shakespeare) is absent")
def test_short_run_on_tiny_shakespeare_learns(tmp_path):
    out = tmp_path / "shakespeare.pt"
    flags = (
        "--n-layer 2 --n-head 4 --n-embd 64 --block-size 64 --batch-size 32 --dropout 0 "
        "--max-iters 400 --eval-interval 200 --eval-iters 10 --lr 3e-3 --min-lr 3e-4 "
        "--warmup-iters 20"
    ).split()
    assert bigram.main(["--data", str(SHAKESPEARE), "--out", str(out), *flags]) == 0
    assert load_checkpoint(out)["best_val_loss"] < 2.3


def test_resume_drops_log_lines_past_the_checkpoint_and_cut_lines(tmp_path):
    log = tmp_path / "run.pt.jsonl"
    log.write_text('{"iter": 5}\n{"iter": 10}\n{"iter": 15}\n{"iter": 2')  # killed mid-write
    bigram.trim_log(log, 10)
    assert log.read_text() == '{"iter": 5}\n{"iter": 10}\n'
