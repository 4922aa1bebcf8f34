"""Training: the loss falls, logs and checkpoints are written, and --resume continues exactly."""

import dataclasses
import json
import math
import os
import signal
import sys
import time

import pytest
import torch
from support import REPO, TINY_MODEL, TINY_RUN, main_error, write_corpus
from torch.nn import functional as F

import bigram
from scratchgpt import distributed, machine, optimizers, runlog, shipped, train_cli
from scratchgpt.checkpoint import (
    CHECKPOINT_DIR,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)


def train(tmp_path, *flags: str) -> list[dict]:
    """Train in-process on the synthetic corpus into tmp_path/run.pt (or --out NAME, also in
    tmp_path); returns the JSONL evaluation log."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(corpus)
    flags = list(flags)
    out = tmp_path / "run.pt"
    if "--out" in flags:  # a name for another run in the same folder
        at = flags.index("--out") + 1
        out = tmp_path / flags.pop(at)
        flags.pop(at - 1)
    argv = ["--data", str(corpus), "--out", str(out), *TINY_RUN, "--lr", "3e-3", *flags]
    assert bigram.main(argv) == 0
    records = [json.loads(line) for line in runlog.log_path(out).read_text().splitlines()]
    return [r for r in records if "val_loss" in r]  # the evaluations, not the final summary


def test_loss_falls_on_a_small_corpus(tmp_path, capsys):
    log = train(tmp_path, "--max-iters", "60", "--eval-interval", "20", "--warmup-iters", "5")
    assert [r["iter"] for r in log] == [20, 40, 60]
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.3
    expected = {"iter", "train_loss", "val_loss", "val_bpc", "lr", "tokens_per_sec", "elapsed_s"}
    assert set(log[0]) == expected
    assert all(r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2)) for r in log)
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
    log = train(tmp_path, "--model-type", "bigram", *flags)
    checkpoint = load_checkpoint(tmp_path / "run.pt")
    assert checkpoint["model_args"]["model_type"] == "bigram"
    assert checkpoint["config"]["model_type"] == "bigram"
    assert log[-1]["val_loss"] < 2.5  # uniform guessing over 31 characters scores 3.43


def test_the_model_type_keeps_its_earlier_name_in_flags_and_checkpoints(tmp_path):
    train(tmp_path, "--model", "bigram", "--max-iters", "2", "--eval-interval", "2")
    saved = load_checkpoint(tmp_path / "run.pt")
    saved["config"]["model"] = saved["config"].pop("model_type")  # as older checkpoints hold it
    save_checkpoint(saved, tmp_path / "run.pt")
    log = train(tmp_path, "--max-iters", "4", "--eval-interval", "2", "--resume")
    assert [r["iter"] for r in log] == [2, 4]
    assert load_checkpoint(tmp_path / "run.pt")["config"]["model_type"] == "bigram"


@pytest.mark.parametrize("arch", ["classic", "modern"])  # AdamW alone; Muon and AdamW
def test_resume_continues_the_same_loss_curve(tmp_path, monkeypatch, arch):
    flags = ["--max-iters", "20", "--eval-interval", "5", "--dropout", "0.1", "--arch", arch]
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


def flags_and_config(flags: list[str], device: str = "cpu"):
    """The parsed flags and the new run's config they make, as python bigram.py makes them."""
    args = train_cli.parse_args(flags, bigram.TrainConfig)
    return args, train_cli.make_config(args, torch.device(device), None, bigram.TrainConfig)


def test_explicit_flags_override_the_preset():
    _, config = flags_and_config(["--preset", "gpu", "--n-layer", "2", "--lr", "0.01"])
    assert (config.n_layer, config.lr) == (2, 0.01)
    assert (config.n_embd, config.block_size) == (384, 256)  # the rest comes from the preset


def test_arch_sets_the_switches_and_single_flags_override_it():
    _, config = flags_and_config(
        ["--preset", "cpu", "--arch", "classic", "--rope", "--mlp", "relu2"]
    )
    classic = bigram.ARCHITECTURES["classic"]
    assert {k: getattr(config, k) for k in classic} == classic | {"rope": True, "mlp": "relu2"}
    assert train_cli.recipe(config).startswith("custom (rope=True, ")
    default = flags_and_config([])[1]
    assert train_cli.recipe(default).startswith("modern (")  # the cpu preset's, by measurement


@pytest.mark.parametrize("native_bf16, preset", [(True, "cpu"), (False, "cpu-float32")])
def test_a_cpu_trains_its_class_preset_for_ten_minutes(monkeypatch, native_bf16, preset):
    monkeypatch.setattr(machine, "bf16_is_native", lambda: native_bf16)
    config = flags_and_config([])[1]
    assert config.preset == preset and config.max_minutes == 10
    assert config.n_embd == bigram.PRESETS[preset]["n_embd"]


def candidates(flags: list[str], device: str = "cpu", native_bf16: bool = True, monkeypatch=None):
    """The (preset, dtype) pairs a new run with these flags chooses among by timing."""
    monkeypatch.setattr(machine, "bf16_is_native", lambda: native_bf16)
    args, config = flags_and_config(flags, device)
    found = train_cli.machine_candidates(
        args, config, torch.device(device), distributed.Distributed()
    )
    return [(c.preset, c.dtype) for c in found]


def test_a_new_cpu_run_times_each_shape_and_each_native_precision(monkeypatch):
    everything = [(p, d) for p in ("cpu", "cpu-float32") for d in ("bfloat16", "float32")]
    assert sorted(candidates([], monkeypatch=monkeypatch)) == everything
    without_bf16 = candidates([], native_bf16=False, monkeypatch=monkeypatch)
    assert sorted(without_bf16) == [("cpu", "float32"), ("cpu-float32", "float32")]


@pytest.mark.parametrize(
    "flags, left",
    [
        (["--dtype", "float32"], [("cpu", "float32"), ("cpu-float32", "float32")]),
        (["--n-layer", "2"], [("cpu", "bfloat16"), ("cpu", "float32")]),  # its own shape
        (["--arch", "classic"], [("cpu", "bfloat16"), ("cpu", "float32")]),  # another recipe
        (["--n-layer", "2", "--dtype", "float32"], []),  # nothing left to choose
        (["--preset", "cpu"], []),
        (["--max-minutes", "1"], []),  # too short a budget to spend on timing
        (["--max-minutes", "0"], []),  # no budget: the steps fix the run
    ],
)
def test_flags_fix_what_the_machine_would_choose(monkeypatch, flags, left):
    assert sorted(candidates(flags, monkeypatch=monkeypatch)) == left


def test_a_gpu_run_is_never_timed(monkeypatch):
    assert candidates([], device="cuda", monkeypatch=monkeypatch) == []


def test_the_candidates_keep_every_other_flag_given(monkeypatch):
    monkeypatch.setattr(machine, "bf16_is_native", lambda: True)
    args, config = flags_and_config(["--dropout", "0.3", "--max-iters", "7"])
    found = train_cli.machine_candidates(
        args, config, torch.device("cpu"), distributed.Distributed()
    )
    assert {(c.dropout, c.max_iters) for c in found} == {(0.3, 7)}
    assert {c.n_embd for c in found} == {256, 128}  # the two presets' shapes


def fake_timings(monkeypatch, calls: list) -> None:
    """Step times of a slow machine: the smaller shape runs 2.3 times the steps in float32."""
    seconds = {"cpu": 0.75, "cpu-float32": 0.33}

    def turns(steps, spend):
        calls.append(sorted(steps))
        return {(p, d): seconds[p] * (1.5 if d == "bfloat16" else 1.0) for p, d in steps}

    monkeypatch.setattr(machine, "time_in_turns", turns)


def test_a_first_run_chooses_by_timing_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine, "cache_path", lambda: tmp_path / "cache" / "machine.json")
    table = {
        "cpu": [(800.0, 1.50), (2000.0, 1.46)],
        "cpu-float32": [(1400.0, 1.52), (4400.0, 1.47)],
    }
    monkeypatch.setattr(machine, "read_shape_table", lambda: table)  # any table, fixed here
    calls = []
    fake_timings(monkeypatch, calls)
    write_corpus(tmp_path / "corpus.txt")
    argv = ["--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "run.pt")]
    argv += ["--max-iters", "2", "--eval-iters", "1", "--sample-chars", "0"]
    assert bigram.main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    # --max-iters 2 caps both shapes at 2 steps: the larger one, in its faster precision
    assert first.startswith("machine: cpu in float32, predicted the best in 10 minutes (")
    assert "cpu-float32 float32 3.03 steps/s" in first and "timed here" in first
    config = load_checkpoint(tmp_path / "run.pt")["config"]
    assert (config["preset"], config["dtype"], config["n_embd"]) == ("cpu", "float32", 256)
    assert bigram.main([*argv[:3], str(tmp_path / "again.pt"), *argv[4:]]) == 0
    assert "timings cached" in capsys.readouterr().out.splitlines()[0]
    assert len(calls) == 1  # the second run timed nothing


def test_a_gpu_trains_the_reference_run_by_steps():
    config = flags_and_config([], "cuda")[1]
    assert config.preset == "gpu" and config.max_minutes == 0 and config.max_iters == 5000


def test_progress_follows_whichever_budget_is_further_along():
    budget = bigram.TrainConfig(max_iters=1000, max_minutes=10)
    assert bigram.run_progress(100, 300.0, budget) == 0.5  # 5 of 10 minutes
    assert bigram.run_progress(800, 300.0, budget) == 0.8  # 800 of 1000 steps
    assert bigram.run_progress(900, 900.0, budget) == 1.0
    assert bigram.run_progress(100, 900.0, bigram.TrainConfig(max_iters=1000)) == 0.1


def last_progress_bar(capsys) -> str:
    """The progress bar as it was last drawn on stderr."""
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    return [line for line in lines if "%|" in line][-1]


def test_the_progress_bar_counts_down_the_time_budget(tmp_path, capsys):
    # 100000 steps would take hours; the budget of 3 seconds ends the run, and the bar says so.
    train(tmp_path, "--max-iters", "100000", "--eval-interval", "1000", "--max-minutes", "0.05")
    last = last_progress_bar(capsys)
    assert last.startswith("100%|") and "<00:00" in last, last


def test_the_progress_bar_ends_full_when_the_budget_runs_out_in_an_evaluation(
    tmp_path, capsys, monkeypatch
):
    evaluate = bigram.evaluate

    def slow_evaluate(run, elapsed):
        time.sleep(3.5)  # longer than the whole budget
        return evaluate(run, elapsed)

    monkeypatch.setattr(bigram, "evaluate", slow_evaluate)
    train(tmp_path, "--max-iters", "100000", "--eval-interval", "5", "--max-minutes", "0.05")
    last = last_progress_bar(capsys)
    assert last.startswith("100%|"), last


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


# -----------------------------------------------------------------------------
# Watching a run: samples at each evaluation, the picture, --plot


def test_each_evaluation_writes_a_sample_with_the_same_seed(tmp_path, capsys):
    log = train(tmp_path, "--max-iters", "4", "--eval-interval", "2", "--sample-chars", "40")
    vocab = load_checkpoint(tmp_path / "run.pt")["vocab"]
    assert [len(r["sample"]) for r in log] == [40, 40]
    assert all(set(r["sample"]) <= set(vocab) for r in log)
    shown = capsys.readouterr().out
    assert "    | " + log[0]["sample"].split("\n")[0] in shown  # under the progress bar
    (tmp_path / "again").mkdir()
    again = train(tmp_path / "again", "--max-iters", "4", "--eval-interval", "2",
                  "--sample-chars", "40")  # fmt: skip
    assert [r["sample"] for r in again] == [r["sample"] for r in log]  # a fixed seed
    train(tmp_path / "again", "--max-iters", "2", "--out", "n.pt", "--sample-chars", "0")
    first = runlog.log_path(tmp_path / "again" / "n.pt").read_text().splitlines()[0]
    assert "sample" not in json.loads(first)


def test_the_picture_of_the_run_is_drawn_beside_its_log(tmp_path):
    pytest.importorskip("matplotlib")
    train(tmp_path, "--max-iters", "4", "--eval-interval", "2")
    assert (tmp_path / "run.pt.png").read_bytes().startswith(b"\x89PNG")


def test_without_matplotlib_training_says_so_once_and_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if it were not installed
    train(tmp_path, "--max-iters", "6", "--eval-interval", "2")
    out = capsys.readouterr().out
    assert out.count("matplotlib is not installed (pip install matplotlib)") == 1
    assert not (tmp_path / "run.pt.png").exists()


def test_plot_draws_several_runs_into_one_picture(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    train(tmp_path, "--max-iters", "4", "--eval-interval", "2")
    train(tmp_path, "--max-iters", "4", "--eval-interval", "2", "--lr", "1e-2", "--out", "b.pt")
    capsys.readouterr()
    logs = [str(tmp_path / "run.pt.jsonl"), str(tmp_path / "b.pt.jsonl")]
    assert bigram.main(["--plot", *logs]) == 0
    picture = tmp_path / "run.pt-vs-b.pt.png"
    assert capsys.readouterr().out.strip() == f"wrote {picture}"
    assert picture.read_bytes().startswith(b"\x89PNG")


# -----------------------------------------------------------------------------
# Fine-tuning: --init-from


def test_fine_tuning_learns_new_text_and_leaves_its_source_alone(tmp_path, capsys):
    train(tmp_path, "--max-iters", "60", "--eval-interval", "60")
    source = tmp_path / "run.pt"
    saved = source.read_bytes()
    new_text = tmp_path / "new.txt"
    new_text.write_text("zebra quartz vexed whiz jumpy! " * 800)  # letters the source lacks
    capsys.readouterr()
    tuned = tmp_path / "tuned.pt"
    run_flags = TINY_RUN[len(TINY_MODEL) :]  # the shape comes from the checkpoint
    argv = ["--init-from", str(source), "--data", str(new_text), "--out", str(tuned), *run_flags,
            "--lr", "3e-3", "--max-iters", "40", "--eval-interval", "1"]  # fmt: skip
    assert bigram.main(argv) == 0
    out = capsys.readouterr().out
    assert f"characters from {source}" in out and "added: " in out
    log = [json.loads(line) for line in runlog.log_path(tuned).read_text().splitlines()]
    log = [r for r in log if "val_loss" in r]
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.5
    assert source.read_bytes() == saved
    checkpoint = load_checkpoint(tuned)
    vocab = load_checkpoint(source)["vocab"]
    assert checkpoint["vocab"][: len(vocab)] == vocab  # the trained characters keep their ids
    assert set(checkpoint["vocab"][len(vocab) :]) == set(new_text.read_text()) - set(vocab)


def test_a_fine_tuned_model_is_named_after_its_corpus_and_its_source():
    argv = ["--init-from", "checkpoints/shakespeare.pt", "--data", "my.txt"]
    args = train_cli.parse_args(argv, bigram.TrainConfig)
    assert train_cli.checkpoint_path(args) == CHECKPOINT_DIR / "my-from-shakespeare.pt"


# -----------------------------------------------------------------------------
# The exhaustive validation loss


def test_a_run_ends_with_the_exhaustive_loss_of_its_best_model(tmp_path, capsys):
    log = train(tmp_path, "--max-iters", "6", "--eval-interval", "2", "--exhaustive-eval")
    assert all("exhaustive_val_loss" in r for r in log)  # at every evaluation, when asked
    final = json.loads(runlog.log_path(tmp_path / "run.pt").read_text().splitlines()[-1])
    best = min(log, key=lambda r: r["val_loss"])
    assert final["iter"] == best["iter"]
    assert final["exhaustive_val_loss"] == pytest.approx(best["exhaustive_val_loss"])
    assert final["exhaustive_val_bpc"] == pytest.approx(final["exhaustive_val_loss"] / math.log(2))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith(f"exhaustive val loss {final['exhaustive_val_loss']:.4f} (")
    assert lines[-1].startswith("best val loss")


# -----------------------------------------------------------------------------
# The modern recipe: Muon beside AdamW, warmup-stable-decay, and checkpoints from before it


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    config = bigram.TrainConfig(optimizer="muon", muon_lr=0.02, lr=2e-3)
    model = bigram.GPTLanguageModel(bigram.GPTConfig(vocab_size=9, block_size=8, n_layer=2,
                                                     n_head=2, n_embd=16))  # fmt: skip
    adamw, muon = optimizers.make_optimizers(model, config, torch.device("cpu"))
    to_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    to_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert not to_muon & to_adamw and to_muon | to_adamw == set(names)  # each one, once
    assert all(names[i].startswith("blocks.") and names[i].endswith("weight") for i in to_muon)
    assert len(to_muon) == 2 * 4  # qkv, attention proj, fc, MLP proj in each block
    assert {names[i] for i in to_adamw} >= {"token_embedding.weight", "lm_head.weight"}
    assert muon.param_groups[0]["lr"] == 0.02 and adamw.param_groups[0]["lr"] == 2e-3


def test_muon_gets_queries_keys_and_values_as_three_matrices_with_split_qkv():
    config = bigram.TrainConfig(optimizer="muon")
    shape = dict(vocab_size=9, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = bigram.GPTLanguageModel(bigram.GPTConfig(**shape, split_qkv=True))
    _, muon = optimizers.make_optimizers(model, config, torch.device("cpu"))
    to_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in to_muon}
    attention = {f"blocks.0.attn.{name}.weight" for name in ("q", "k", "v", "proj")}
    assert names == attention | {"blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"}


def forget_settings(path, names):
    """Rewrite a checkpoint as one written before these settings existed."""
    checkpoint = load_checkpoint(path)
    for saved in (checkpoint["model_args"], checkpoint["config"]):
        for name in names:
            saved.pop(name, None)
    save_checkpoint(checkpoint, path)


def fine_tune_two_steps(tmp_path):
    """--init-from tmp_path/run.pt on the same corpus, into tmp_path/tuned.pt (returned)."""
    tuned = tmp_path / "tuned.pt"
    argv = ["--init-from", str(tmp_path / "run.pt"), "--data", str(tmp_path / "corpus.txt"),
            "--out", str(tuned), *TINY_RUN[len(TINY_MODEL):], "--max-iters", "2"]  # fmt: skip
    assert bigram.main(argv) == 0
    return tuned


def test_every_switch_is_in_both_architectures_and_classic_is_the_defaults():
    # A switch is declared once, as a config field marked switch=True; the architectures and
    # the settings of older checkpoints (checkpoint.with_switch_defaults) follow from it.
    fields = {f.name: f.default for f in dataclasses.fields(bigram.TrainConfig)}
    switches = {f.name for f in dataclasses.fields(bigram.TrainConfig) if f.metadata.get("switch")}
    for arch in bigram.ARCHITECTURES.values():
        assert arch.keys() == switches
    assert bigram.ARCHITECTURES["classic"] == {name: fields[name] for name in switches}


def test_checkpoints_from_before_the_switches_resume_and_fine_tune_as_classic(tmp_path):
    train(tmp_path, "--arch", "classic", "--max-iters", "4", "--eval-interval", "2")
    forget_settings(tmp_path / "run.pt", [*bigram.ARCHITECTURES["classic"], "muon_lr"])
    log = train(tmp_path, "--max-iters", "8", "--eval-interval", "2", "--resume")
    assert [r["iter"] for r in log] == [2, 4, 6, 8]
    model_args = load_checkpoint(fine_tune_two_steps(tmp_path))["model_args"]
    assert (model_args["rope"], model_args["norm"], model_args["bias"]) == (False, "layer", True)


def test_modern_checkpoints_from_before_split_qkv_keep_their_one_qkv_matrix(tmp_path, capsys):
    train(
        tmp_path, "--arch", "modern", "--no-split-qkv", "--max-iters", "2", "--eval-interval", "2"
    )
    forget_settings(tmp_path / "run.pt", ["split_qkv"])  # a modern run from before the switch
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run.pt"), bigram.MODEL_TYPES)
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 16, 16)
    log = train(tmp_path, "--max-iters", "4", "--eval-interval", "2", "--resume")
    assert [r["iter"] for r in log] == [2, 4]
    base = ["--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "run.pt"), "--resume"]
    line = main_error(bigram.main, [*base, "--arch", "modern"], capsys)  # now: three matrices
    assert "keeps the saved model's shape and optimizer; drop --arch" in line
    for path in (tmp_path / "run.pt", fine_tune_two_steps(tmp_path)):  # still one qkv matrix
        assert load_checkpoint(path)["model_args"]["split_qkv"] is False


def test_resume_refuses_another_architecture_or_optimizer(tmp_path, capsys):
    train(tmp_path, "--arch", "classic", "--max-iters", "2", "--eval-interval", "2")
    base = ["--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "run.pt"), "--resume"]
    for flags, named in [(["--arch", "modern"], "--arch"), (["--rope"], "--rope"),
                         (["--optimizer", "muon"], "--optimizer")]:  # fmt: skip
        line = main_error(bigram.main, [*base, *flags], capsys)
        assert f"keeps the saved model's shape and optimizer; drop {named}" in line


PASSAGE = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief,
That thou her maid art far more fair than she.
"""


def test_bf16_and_float32_training_steps_agree_to_bf16_rounding():
    """The machine picks the training precision by speed alone: both give the same loss and
    gradient directions, to bf16's rounding (8 bits of mantissa), on the shipped trained model."""
    saved = load_checkpoint(shipped.MODEL_PATH)
    model = model_from_checkpoint(
        saved, bigram.MODEL_TYPES, "cpu", shipped.MODEL_PATH
    ).eval()  # no dropout
    ids = torch.tensor([saved["vocab"].index(ch) for ch in PASSAGE])
    n = model.config.block_size  # one window of the model's context
    x, y = ids[:n][None], ids[1 : n + 1][None]
    losses, gradients = [], []
    for dtype in (torch.float32, torch.bfloat16):
        model.zero_grad()
        loss = bigram.micro_batch_loss(model, x, y, torch.device("cpu"), dtype)
        loss.backward()
        losses.append(loss.item())
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert 1.0 < losses[0] < 2.5  # a trained model on Shakespeare: the comparison means something
    assert abs(losses[1] - losses[0]) < 0.02 * losses[0]
    assert F.cosine_similarity(*gradients, dim=0) > 0.98
