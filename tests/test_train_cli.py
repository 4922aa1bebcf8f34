"""bigram.py's errors: each is one line on stderr and a non-zero exit, and nothing good is lost."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import (
    REPO,
    TINY_MODEL,
    TINY_RUN,
    assert_clean_error,
    fill,
    grow,
    main_error,
    make_checkout,
    run_script,
    write_corpus,
)

import bigram
from scratchgpt import runlog, scoring, train_cli
from scratchgpt.checkpoint import load_checkpoint

TRAIN = [*TINY_RUN, "--max-iters", "2", "--eval-interval", "2"]


def train(tmp_path, *flags: str, env: dict | None = None):
    flags = ("--out", str(tmp_path / "run.pt"), *TRAIN, *flags)  # a later --out wins
    return run_script("bigram.py", *flags, cwd=tmp_path, env=env)


def test_missing_default_corpus_offline_says_where_to_put_it(tmp_path):
    checkout = make_checkout(tmp_path)  # a fresh clone: no data/input.txt yet
    offline = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = run_script("bigram.py", *TRAIN, cwd=tmp_path, env=offline, repo=checkout)
    assert_clean_error(result, "data/input.txt", "tinyshakespeare/input.txt")
    assert not any((tmp_path / "data").iterdir())  # no partial download left to look like data


def test_missing_corpus_file(tmp_path):
    assert_clean_error(train(tmp_path, "--data", "nope.txt"), "nope.txt not found")


def test_corpus_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 1000)
    assert_clean_error(train(tmp_path, "--data", "latin1.txt"), "not UTF-8")


def test_corpus_too_short_for_the_context(tmp_path):
    write_corpus(tmp_path / "short.txt", n_chars=100)
    assert_clean_error(train(tmp_path, "--data", "short.txt"), "needs at least 170")


def test_impossible_model_config(tmp_path):
    write_corpus(tmp_path / "c.txt")
    result = train(tmp_path, "--data", "c.txt", "--n-embd", "30", "--n-head", "4")
    assert_clean_error(result, "n_embd (30) must be divisible by n_head (4)")


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_unavailable_device(tmp_path, device):
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if available[device]:
        pytest.skip(f"{device} is available here")
    write_corpus(tmp_path / "c.txt")
    assert_clean_error(train(tmp_path, "--data", "c.txt", "--device", device), device)


def test_resume_without_a_checkpoint(tmp_path):
    write_corpus(tmp_path / "c.txt")
    assert_clean_error(train(tmp_path, "--data", "c.txt", "--resume"), "no checkpoint")


def test_resume_with_another_vocabulary_leaves_the_checkpoint_untouched(tmp_path):
    write_corpus(tmp_path / "c.txt")
    assert train(tmp_path, "--data", "c.txt").returncode == 0
    saved = (tmp_path / "run.pt").read_bytes()
    (tmp_path / "other.txt").write_text("xyz 123\n" * 500)
    assert_clean_error(train(tmp_path, "--data", "other.txt", "--resume"), "trained on", "not ")
    assert (tmp_path / "run.pt").read_bytes() == saved


def test_resume_cannot_change_the_model_shape(tmp_path):
    write_corpus(tmp_path / "c.txt")
    assert train(tmp_path, "--data", "c.txt").returncode == 0
    result = train(tmp_path, "--data", "c.txt", "--resume", "--n-embd", "32")
    assert_clean_error(result, "--resume keeps the saved model's shape")


def test_corrupt_checkpoint_on_resume_is_reported_and_kept(tmp_path):
    write_corpus(tmp_path / "c.txt")
    (tmp_path / "run.pt").write_bytes(b"not a checkpoint")
    assert_clean_error(train(tmp_path, "--data", "c.txt", "--resume"), "truncated or corrupt")
    assert (tmp_path / "run.pt").read_bytes() == b"not a checkpoint"


def test_float16_on_the_cpu(tmp_path):
    write_corpus(tmp_path / "c.txt")
    result = train(tmp_path, "--data", "c.txt", "--device", "cpu", "--dtype", "float16")
    assert_clean_error(result, "float16 needs a GPU")


def test_a_new_run_never_replaces_a_trained_model(tmp_path):
    write_corpus(tmp_path / "c.txt")
    assert train(tmp_path, "--data", "c.txt").returncode == 0
    saved = (tmp_path / "run.pt").read_bytes()
    assert_clean_error(train(tmp_path, "--data", "c.txt"), "exists", "--resume")
    assert (tmp_path / "run.pt").read_bytes() == saved


def test_negative_settings_are_rejected(tmp_path):
    write_corpus(tmp_path / "c.txt")
    result = train(tmp_path, "--data", "c.txt", "--weight-decay", "-1")
    assert_clean_error(result, "--weight-decay must not be negative")


# -----------------------------------------------------------------------------
# What bigram.py guarantees about your files (README, "Your files are safe")


def corpus_in(tmp_path, name: str = "c.txt"):
    return write_corpus(tmp_path / name)


def in_process(tmp_path, *flags: str) -> list[str]:
    return ["--out", str(tmp_path / "run.pt"), *TRAIN, *flags]


def test_the_log_adds_to_the_checkpoint_name_so_it_never_replaces_a_corpus(tmp_path):
    corpus = corpus_in(tmp_path, "run.jsonl")  # where the log used to go for --out run.pt
    before = corpus.read_bytes()
    assert train(tmp_path, "--data", "run.jsonl").returncode == 0
    assert corpus.read_bytes() == before
    assert (tmp_path / "run.pt.jsonl").exists()
    for out in ("m.v1", "m.v2", "x.jsonl"):  # each run has its own log, none inside a checkpoint
        assert train(tmp_path, "--data", "run.jsonl", "--out", out).returncode == 0
        assert load_checkpoint(tmp_path / out)["iter"] == 2
        assert len((tmp_path / f"{out}.jsonl").read_text().splitlines()) == 2  # eval, summary


def test_no_output_of_a_run_may_be_its_corpus(tmp_path, capsys):
    corpus = corpus_in(tmp_path, "run.pt.jsonl")
    before = corpus.read_bytes()
    line = main_error(bigram.main, in_process(tmp_path, "--data", str(corpus)), capsys)
    assert "training log" in line and "is the corpus" in line
    line = main_error(bigram.main, [*in_process(tmp_path, "--data", str(corpus)), "--out",
                                    str(corpus)], capsys)  # fmt: skip
    assert "checkpoint" in line and "is the corpus" in line
    assert corpus.read_bytes() == before


def test_a_second_run_on_a_busy_checkpoint_is_refused_and_a_killed_run_frees_it(tmp_path):
    corpus_in(tmp_path)
    long_run = [*TINY_RUN, "--data", "c.txt", "--out", "run.pt", "--max-iters", "100000"]
    first = subprocess.Popen([sys.executable, str(REPO / "bigram.py"), *long_run,
                              "--eval-interval", "5"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        while not (tmp_path / "run.pt").exists():  # its first checkpoint is saved
            assert first.poll() is None
            time.sleep(0.05)
        live_temp = tmp_path / "run.pt.a1b2c3d4.tmp"  # as if the first run were saving now
        live_temp.write_bytes(b"partial")
        for flags in ([], ["--resume"]):
            second = run_script("bigram.py", *long_run, *flags, cwd=tmp_path)
            assert_clean_error(second, "run.pt is in use by another run")
        assert live_temp.exists()  # a live run's files are never touched
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
    resumed = train(tmp_path, "--data", "c.txt", "--resume", "--max-iters", "10")
    assert resumed.returncode == 0, resumed.stderr
    assert not live_temp.exists()  # the dead run's leftover is cleaned up by the next run


@pytest.mark.parametrize("setting", ["--lr", "--min-lr", "--weight-decay", "--grad-clip",
                                     "--max-minutes"])  # fmt: skip
def test_nan_and_infinite_settings_are_refused(tmp_path, capsys, setting):
    corpus = corpus_in(tmp_path)
    for value in ("nan", "inf"):
        argv = in_process(tmp_path, "--data", str(corpus), setting, value)
        assert "must be a finite number" in main_error(bigram.main, argv, capsys)
    assert not (tmp_path / "run.pt").exists()


def test_a_run_that_evaluates_nothing_fails_and_claims_no_checkpoint(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    argv = in_process(tmp_path, "--data", str(corpus), "--max-minutes", "1e-9")
    assert "nothing was saved" in main_error(bigram.main, argv, capsys)
    assert not (tmp_path / "run.pt").exists()


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    corpus = corpus_in(tmp_path)
    real_step, steps = bigram.train_on_batches, []

    def step_that_breaks_after_25(model, *args):
        steps.append(1)
        if len(steps) > 25:  # as if a too-large step had blown the weights up
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return real_step(model, *args)

    monkeypatch.setattr(bigram, "train_on_batches", step_that_breaks_after_25)
    argv = ["--out", str(tmp_path / "run.pt"), *TINY_RUN, "--data", str(corpus),
            "--max-iters", "100", "--eval-interval", "20"]  # fmt: skip
    line = main_error(bigram.main, argv, capsys)
    assert "diverged: the loss became nan by iter 30" in line
    assert "keeps the best model (iter 20" in line
    assert len(steps) == 30  # it stopped at the first loss it read, not at max-iters
    assert math.isfinite(load_checkpoint(tmp_path / "run.pt")["best_val_loss"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", "c.txt/run.pt"], "c.txt is a file, not a folder"),
        (["--out", "x" * 250 + ".pt"], "File name too long"),
        (["--out", "."], "is a folder; give a file path"),
        (["--n-layer", "1000000000"], "sequences at once, more than the"),
        (["--batch-size", "1000000000"], "sequences at once, more than the"),
        (["--seed", "-1"], "--seed must be between 0 and"),
    ],
)
def test_impossible_outputs_and_shapes_fail_before_training(tmp_path, capsys, flags, message):
    corpus = corpus_in(tmp_path)
    argv = ["--out", str(tmp_path / "run.pt"), *TRAIN, "--data", str(corpus)]
    argv += [str(tmp_path / f) if f.startswith(("c.txt", "x", ".")) else f for f in flags]
    assert message in main_error(bigram.main, argv, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_a_log_path_that_is_a_folder_fails_before_training(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    (tmp_path / "run.pt.jsonl").mkdir()
    line = main_error(bigram.main, in_process(tmp_path, "--data", str(corpus)), capsys)
    assert "training log" in line and "is a folder" in line
    assert not (tmp_path / "run.pt").exists()


def test_a_full_disk_at_a_save_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, capsys, monkeypatch
):
    corpus = corpus_in(tmp_path)
    real_save, saves = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    argv = in_process(tmp_path, "--data", str(corpus), "--max-iters", "4", "--lr", "3e-3")
    line = main_error(bigram.main, argv, capsys)
    assert "No space left on device" in line and "previous one there is intact" in line
    assert load_checkpoint(tmp_path / "run.pt")["iter"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoints_with_tampered_training_state_are_refused_on_resume(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    argv = in_process(tmp_path, "--data", str(corpus))
    assert bigram.main(argv) == 0
    good = torch.load(tmp_path / "run.pt", weights_only=True)
    for damage, message in [
        ({"config": good["config"] | {"lr": "fast"}}, "lr should be float"),
        ({"config": good["config"] | {"evil": 1}}, "unknown setting 'evil'"),
        ({"config": good["config"] | {"cautious_decay": True}}, "unknown setting 'cautious_decay'"),
        ({"iter": -5}, "iter is -5"),
        ({"optimizer": {"state": 3}}, "damaged state"),
        ({"model_args": good["model_args"] | {"model_type": "lstm"}}, "unknown model type"),
        ({"corpus": {"chars": "many"}}, "record of its corpus is damaged"),
    ]:
        torch.save(good | damage, tmp_path / "run.pt")
        assert message in main_error(bigram.main, [*argv, "--resume"], capsys)


def test_rank_without_the_other_torchrun_variables(tmp_path, capsys, monkeypatch):
    corpus = corpus_in(tmp_path)
    monkeypatch.setenv("RANK", "0")
    for name in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    line = main_error(bigram.main, in_process(tmp_path, "--data", str(corpus)), capsys)
    assert "LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT" in line and "torchrun" in line


def test_a_console_that_cannot_show_a_character_does_not_stop_training(tmp_path):
    corpus_in(tmp_path)
    result = train(tmp_path, "--data", "c.txt", "--out", "modèle.pt",
                   env={"PYTHONIOENCODING": "ascii"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "-> mod?le.pt" in result.stdout


def test_training_outlives_its_stdout(tmp_path):
    corpus_in(tmp_path)
    command = [sys.executable, str(REPO / "bigram.py"), *TINY_RUN, "--data", "c.txt",
               "--max-iters", "12", "--eval-interval", "2"]  # fmt: skip
    for name, how in [("head.pt", "reader leaves"), ("closed.pt", "stdout closed")]:
        if how == "reader leaves":  # like `python bigram.py | head -1`
            run = subprocess.Popen([*command, "--out", name], cwd=tmp_path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
            run.stdout.readline()
            run.stdout.close()
        else:  # like `python bigram.py >&-`
            run = subprocess.Popen([*command, "--out", name], cwd=tmp_path, text=True,
                                   stderr=subprocess.PIPE, pass_fds=(), close_fds=True,
                                   preexec_fn=lambda: os.close(1))  # fmt: skip
        stderr = run.communicate()[1]
        assert run.returncode == 0, stderr
        assert "Traceback" not in stderr and "Exception ignored" not in stderr
        assert load_checkpoint(tmp_path / name)["iter"] > 0


def test_sigterm_while_the_reddit_cache_is_built_leaves_no_temporary_file(tmp_path):
    checkout = make_checkout(tmp_path / "repo")
    big = tmp_path / "comments.txt"
    big.write_text("some comment text with words\n" * 1_500_000)  # ~45 MB: seconds to encode
    run = subprocess.Popen(
        [sys.executable, str(checkout / "bigram.py"), "--dataset", "reddit", "--data", str(big),
         "--out", str(tmp_path / "r.pt"), *TRAIN],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    cache = checkout / "data" / "cache"
    while not list(cache.glob("*.tmp")):  # the token file is being written
        assert run.poll() is None
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: no file was left half-written"
    assert "Traceback" not in stderr
    assert not list(cache.glob("*.tmp"))
    assert not (tmp_path / "r.pt").exists()


def test_misleading_messages_now_say_what_is_wrong(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    capsys.readouterr()
    argv = [*in_process(tmp_path, "--data", str(corpus)), "--resume", "--n-embd", "32"]
    assert "drop --n-embd" in main_error(bigram.main, argv, capsys)
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    argv = ["--out", str(tmp_path / "new.pt"), *TRAIN, "--data", str(tmp_path / "loop.txt")]
    assert "is a symbolic link loop" in main_error(bigram.main, argv, capsys)
    assert train_cli.is_reddit(bigram.TrainConfig(data="COMMENTS.RAR"))  # read as an archive


def test_flags_that_do_nothing_say_so(tmp_path):
    corpus_in(tmp_path)
    result = train(tmp_path, "--data", "c.txt", "--max-vocab", "100", "--no-clean",
                   "--backend", "gloo")  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --max-vocab applies to Reddit archives only; ignored",
        "warning: --backend applies to distributed runs (torchrun) only; ignored",
    ]


def test_default_folders_are_the_repositorys_wherever_it_runs_from(tmp_path):
    checkout = make_checkout(tmp_path / "repo")
    (checkout / "data").mkdir()
    write_corpus(checkout / "data" / "input.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    trained = run_script("bigram.py", *TRAIN, cwd=elsewhere, repo=checkout)
    assert trained.returncode == 0, trained.stderr
    assert (checkout / "checkpoints" / "shakespeare.pt").exists()
    generated = run_script("MODEL.py", "--num-tokens", "5", cwd=elsewhere, repo=checkout)
    assert generated.returncode == 0, generated.stderr
    assert not any(elsewhere.iterdir())


def test_fine_tuning_refuses_what_it_cannot_do(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    source = str(tmp_path / "run.pt")
    capsys.readouterr()
    run = ["--data", str(corpus), *TRAIN[len(TINY_MODEL) :], "--out", str(tmp_path / "ft.pt")]
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cposix\nsystem\n(S'true'\ntR.")  # a protocol-0 pickle calling os.system
    for flags, message in [
        (["--init-from", source, "--resume", "--out", source], "--resume continues one"),
        (["--init-from", source, "--n-embd", "32"], "drop --n-embd"),
        (["--init-from", source, "--out", source], "is the checkpoint it starts from"),
        (["--init-from", str(tmp_path / "none.pt")], "not found"),
        (["--init-from", str(evil)], "pickled code (it would call posix.system)"),
    ]:
        assert message in main_error(bigram.main, [*run, *flags], capsys)
    assert not (tmp_path / "ft.pt").exists()


# -----------------------------------------------------------------------------
# Every file a run writes is one of run_outputs, checked before any work starts


@pytest.mark.parametrize("what", list(train_cli.run_outputs(Path("notes"))))
def test_no_output_of_a_run_is_its_corpus_whatever_its_name(tmp_path, capsys, what):
    # --out notes draws notes.png, logs to notes.jsonl and locks notes.lock: none is the corpus.
    out = tmp_path / "notes"
    corpus = corpus_in(tmp_path, train_cli.run_outputs(out)[what].name)
    before = corpus.read_bytes()
    argv = ["--out", str(out), *TRAIN, "--data", str(corpus)]
    line = main_error(bigram.main, argv, capsys)
    assert f"{what} {corpus} is the corpus" in line
    assert corpus.read_bytes() == before


def test_a_run_writes_its_named_outputs_and_nothing_else(tmp_path):
    corpus = corpus_in(tmp_path)
    runs = tmp_path / "runs"
    assert bigram.main(["--out", str(runs / "run.pt"), *TRAIN, "--data", str(corpus)]) == 0
    outputs = train_cli.run_outputs(runs / "run.pt")
    written = {p.name for p in runs.iterdir()}
    assert written == {outputs[what].name for what in ("checkpoint", "training log", "picture")}
    assert not outputs["lock"].exists()  # held during the run, removed after it


def test_a_file_that_no_run_drew_is_never_replaced_by_the_picture(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    picture = tmp_path / "run.pt.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n a holiday photo")
    line = main_error(bigram.main, in_process(tmp_path, "--data", str(corpus)), capsys)
    assert "is not a picture of a training run" in line
    assert picture.read_bytes() == b"\x89PNG\r\n\x1a\n a holiday photo"
    assert not (tmp_path / "run.pt").exists() and not (tmp_path / "run.pt.jsonl").exists()


def test_resume_keeps_a_picture_without_the_mark_and_trains_on(tmp_path, capsys):
    # An older version drew run.pt.png without the mark: resuming must neither stop nor replace it.
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    picture = tmp_path / "run.pt.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n drawn by an older version")
    assert bigram.main([*in_process(tmp_path), "--resume", "--max-iters", "4"]) == 0
    assert picture.read_bytes() == b"\x89PNG\r\n\x1a\n drawn by an older version"
    assert "no picture of the run" in capsys.readouterr().out


def test_a_corpus_named_like_a_temporary_file_survives_the_cleanup(tmp_path):
    corpus = corpus_in(tmp_path, "run.pt.a1b2c3d4.tmp")  # the pattern of a killed save's leftovers
    before = corpus.read_bytes()
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    assert corpus.read_bytes() == before


def test_a_file_that_takes_the_pictures_name_during_a_run_is_kept(tmp_path, capsys, monkeypatch):
    corpus = corpus_in(tmp_path)
    picture = tmp_path / "run.pt.png"
    real_draw = runlog.draw_runs

    def another_program_writes_first(logs, out):
        picture.write_text("another program's")
        real_draw(logs, out)

    monkeypatch.setattr(runlog, "draw_runs", another_program_writes_first)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    assert picture.read_text() == "another program's"
    assert "no picture of the run" in capsys.readouterr().out  # under the progress bar


# -----------------------------------------------------------------------------
# --resume on a changed corpus, and the states a kill can leave


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda text: text[: len(text) // 2], "characters then"),
        (lambda text: text + "the", "characters then"),
        (lambda text: text[:5000] + text[5001] + text[5000] + text[5002:], "the same length"),
    ],
)
def test_resume_refuses_a_changed_corpus_and_says_how_to_go_on(tmp_path, capsys, change, message):
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    saved = (tmp_path / "run.pt").read_bytes()
    corpus.write_text(change(corpus.read_text()))
    line = main_error(bigram.main, [*in_process(tmp_path), "--resume"], capsys)
    assert "has changed since" in line and message in line and "--init-from" in line
    assert (tmp_path / "run.pt").read_bytes() == saved
    fine_tune = ["--init-from", str(tmp_path / "run.pt"), "--data", str(corpus)]
    fine_tune += ["--out", str(tmp_path / "new.pt"), *TRAIN[len(TINY_MODEL) :]]  # its own shape
    assert bigram.main(fine_tune) == 0


def test_a_kill_between_a_save_and_its_log_line_is_continued_by_resume(
    tmp_path, capsys, monkeypatch
):
    corpus = corpus_in(tmp_path)
    real_append = runlog.append_log

    def killed_before_the_first_line(path, record, new=False):
        assert (tmp_path / "run.pt").exists()  # the checkpoint is written before its log line
        raise KeyboardInterrupt  # what a kill at this moment leaves: no log line

    monkeypatch.setattr(runlog, "append_log", killed_before_the_first_line)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 130
    monkeypatch.setattr(runlog, "append_log", real_append)
    line = main_error(bigram.main, in_process(tmp_path, "--data", str(corpus)), capsys)
    assert "--resume" in line  # the one command that continues it
    assert bigram.main([*in_process(tmp_path), "--resume", "--max-iters", "4"]) == 0
    assert load_checkpoint(tmp_path / "run.pt")["iter"] == 4


def test_a_damaged_log_is_trimmed_on_resume_not_a_traceback(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    log = tmp_path / "run.pt.jsonl"
    log.write_bytes(log.read_bytes() + b"\xff\xfe\x00 half a line of binary\n")
    assert bigram.main([*in_process(tmp_path), "--resume", "--max-iters", "4"]) == 0
    iters = [json.loads(line)["iter"] for line in log.read_text().splitlines()]
    assert iters == [2, 4, 4]  # two evaluations, then the summary of the best model


def test_resume_refuses_a_log_that_is_someone_elses_file(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    log = tmp_path / "run.pt.jsonl"
    log.write_text("my shopping list\n")
    assert "is not a training log" in main_error(
        bigram.main, [*in_process(tmp_path), "--resume"], capsys
    )
    assert log.read_text() == "my shopping list\n"
    log.unlink()
    log.mkdir()
    line = main_error(bigram.main, [*in_process(tmp_path), "--resume"], capsys)
    assert "is a folder: move it away" in line


def test_a_folder_replaced_by_a_file_mid_run_is_one_line(tmp_path, capsys, monkeypatch):
    corpus = corpus_in(tmp_path)
    runs = tmp_path / "runs"
    real_estimate, calls = scoring.estimate_loss, []

    def estimate_then_lose_the_folder(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(runs)
            runs.write_text("a file where the folder was")
        return real_estimate(*args, **kwargs)

    monkeypatch.setattr(scoring, "estimate_loss", estimate_then_lose_the_folder)
    argv = ["--out", str(runs / "run.pt"), *TRAIN, "--data", str(corpus), "--max-iters", "4"]
    assert "runs" in main_error(bigram.main, argv, capsys)


@pytest.mark.parametrize("data", ["/dev/zero", "pipe"])
def test_a_corpus_that_never_ends_is_refused_at_once(tmp_path, data):
    if data == "pipe":
        data = str(tmp_path / "pipe")
        os.mkfifo(data)  # no writer: reading it would wait for ever
    assert_clean_error(train(tmp_path, "--data", data), "is not a regular file")


def test_plot_says_what_is_wrong_with_a_folder(tmp_path, capsys):
    (tmp_path / "logs.jsonl").mkdir()
    argv = ["--plot", str(tmp_path / "logs.jsonl")]
    assert "is a folder, not a file" in main_error(bigram.main, argv, capsys)


def test_a_sample_longer_than_any_run_could_want_is_refused(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    argv = in_process(tmp_path, "--data", str(corpus), "--sample-chars", "100001")
    assert "--sample-chars must be between 0 and 100,000" in main_error(bigram.main, argv, capsys)


# -----------------------------------------------------------------------------
# Files part three: paths, streams and states that one command continues


def test_a_first_save_on_a_full_disk_does_not_speak_of_a_previous_checkpoint(
    tmp_path, capsys, monkeypatch
):
    def full_disk(obj, f, *args, **kwargs):  # simulated: the first save's write fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    line = main_error(bigram.main, in_process(tmp_path, "--data", str(corpus_in(tmp_path))), capsys)
    assert "nothing was written there" in line and not (tmp_path / "run.pt").exists()


def test_a_full_file_system_on_the_first_save_and_the_same_command_once_there_is_room(
    tmp_path, small_disk, capsys
):
    # Real: the checkpoint's folder is a tmpfs filled to its last byte, then given room again.
    argv = ["--out", str(small_disk / "run.pt"), *TRAIN, "--data", str(corpus_in(tmp_path))]
    fill(small_disk)
    line = main_error(bigram.main, argv, capsys)
    assert "No space left" in line and "nothing was written there" in line
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no temporary file either
    grow(small_disk)
    assert bigram.main(argv) == 0
    assert load_checkpoint(small_disk / "run.pt")["iter"] == 2
    assert runlog.is_training_log(small_disk / "run.pt.jsonl")


@pytest.mark.parametrize("flag", ["--no-clean", "--clean", "--dataset=reddit", "--no-rope"])
def test_resume_names_the_flag_that_would_change_the_run(tmp_path, capsys, flag):
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus), "--no-clean")) == 0
    if flag == "--no-clean":  # what it was saved with: nothing changes
        assert bigram.main([*in_process(tmp_path), "--resume", flag, "--max-iters", "4"]) == 0
        return
    line = main_error(bigram.main, [*in_process(tmp_path), "--resume", flag], capsys)
    assert f"drop {flag.split('=')[0]}" in line and "has changed" not in line


def test_a_deleted_checkpoints_log_is_set_aside_and_the_run_goes_on(tmp_path, capsys):
    corpus = corpus_in(tmp_path)
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    first_log = (tmp_path / "run.pt.jsonl").read_text()
    (tmp_path / "run.pt").unlink()  # the user starts again
    capsys.readouterr()
    assert bigram.main(in_process(tmp_path, "--data", str(corpus))) == 0
    assert "kept as" in capsys.readouterr().err
    assert (tmp_path / "run.pt.earlier-1.jsonl").read_text() == first_log
    assert (tmp_path / "run.pt").exists() and (tmp_path / "run.pt.jsonl").exists()


def test_an_out_ending_in_a_slash_is_a_folder(tmp_path, capsys):
    argv = [*in_process(tmp_path, "--data", str(corpus_in(tmp_path))), "--out", "runs/"]
    assert "--out runs/ is a folder; give a file path such as runs/run.pt" in main_error(
        bigram.main, argv, capsys
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("which", ["--out", "--data"])
def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys, which):
    argv = [*in_process(tmp_path, "--data", str(corpus_in(tmp_path))), which, "x" * 300]
    assert "the name is longer than the file system allows" in main_error(bigram.main, argv, capsys)


def test_a_sparse_terabyte_corpus_is_refused_by_its_size(tmp_path, capsys):
    with (tmp_path / "huge.txt").open("wb") as f:
        f.truncate(1 << 40)
    line = main_error(
        bigram.main, in_process(tmp_path, "--data", str(tmp_path / "huge.txt")), capsys
    )
    assert "1,099,511,627,776 bytes, more than" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_training_outlives_a_full_or_closed_stderr(tmp_path, stderr):
    # Real streams: /dev/full fails every write with ENOSPC, as a full disk under `2> log` does;
    # a closed stderr is fd 2 closed before the program starts (`2>&-`).
    write_corpus(tmp_path / "c.txt")
    argv = [sys.executable, str(REPO / "bigram.py"), "--out", str(tmp_path / "run.pt"), *TRAIN]
    argv += ["--data", "c.txt"]

    def run(**streams):
        return subprocess.run(argv, cwd=tmp_path, stdout=subprocess.PIPE, timeout=300, **streams)

    if stderr == "full":
        with open("/dev/full", "w") as full:
            result = run(stderr=full)
    else:
        result = run(preexec_fn=lambda: os.close(2))
    assert result.returncode == 0
    assert load_checkpoint(tmp_path / "run.pt")["iter"] == 2
    assert b"best val loss" in result.stdout


def test_a_run_on_a_relative_corpus_resumes_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    corpus_in(tmp_path / "a")
    monkeypatch.chdir(tmp_path / "a")
    assert bigram.main(["--out", "run.pt", *TRAIN, "--data", "c.txt"]) == 0
    monkeypatch.chdir(tmp_path / "b")  # where no c.txt is
    assert bigram.main(["--out", "../a/run.pt", *TRAIN, "--resume", "--max-iters", "4"]) == 0
    assert load_checkpoint(tmp_path / "a" / "run.pt")["iter"] == 4
