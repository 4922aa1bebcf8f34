"""The model shipped in pretrained/: it loads with today's code, scores what its card says, writes
a known text for a seed, is what MODEL.py falls back to, and is never written."""

import hashlib
import re
import subprocess
import sys

import pytest
import torch
from support import (
    REPO,
    SHARED,
    TINY_RUN,
    assert_clean_error,
    make_checkout,
    run_script,
    write_corpus,
)

import bigram
import MODEL
from scratchgpt import checkpoint, corpus, scoring, shipped

TINY_SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
CARD = shipped.CARD_PATH.read_text(encoding="utf-8")
# MODEL.py --checkpoint pretrained/shakespeare.pt --weights float32 --seed 1337 --num-tokens 200
GOLDEN_SAMPLE = (REPO / "tests" / "golden" / "shipped-seed-1337.txt").read_text(encoding="utf-8")


def card_figure(label: str) -> str:
    """The value of the card's table row `| label | value |`."""
    match = re.search(rf"^\| {re.escape(label)} \| ([^|]+) \|$", CARD, re.MULTILINE)
    assert match, f"the card has no row for {label}"
    return match.group(1).strip()


@pytest.fixture(scope="module")
def saved() -> dict:
    return checkpoint.load_checkpoint(shipped.MODEL_PATH)


@pytest.fixture(scope="module")
def model(saved):
    return checkpoint.model_from_checkpoint(
        saved, bigram.MODEL_TYPES, "cpu", shipped.MODEL_PATH
    ).eval()


def test_the_shipped_file_holds_float16_weights_and_nothing_for_resume(saved):
    assert not any(key in saved for key in checkpoint.RESUME_KEYS)
    assert {t.dtype for t in saved["model"].values() if t.is_floating_point()} == {torch.float16}
    assert shipped.MODEL_PATH.stat().st_size < 8.5e6


def test_the_card_gives_the_models_parameter_count_and_vocabulary(saved, model):
    assert card_figure("parameters") == f"{model.num_parameters():,}"
    assert card_figure("vocabulary").startswith(f"{len(saved['vocab'])} characters")


@pytest.mark.skipif(not TINY_SHAKESPEARE.is_file(), reason=f"{TINY_SHAKESPEARE} not found")
def test_the_card_gives_the_models_exhaustive_val_loss(saved, model):
    text = corpus.load_text_corpus(TINY_SHAKESPEARE)
    assert text.vocab == saved["vocab"]
    _, val = corpus.split_corpus(text.tokens)
    loss = scoring.exhaustive_val_loss(model, val, model.config.block_size, "cpu", torch.float32)
    assert float(card_figure("exhaustive val loss").split()[0]) == pytest.approx(loss, abs=0.001)


def test_a_seeded_float32_sample_is_the_golden_text(capsys):
    argv = ["--checkpoint", str(shipped.MODEL_PATH), "--weights", "float32", "--seed", "1337"]
    assert MODEL.main([*argv, "--num-tokens", "200"]) == 0
    assert capsys.readouterr().out == GOLDEN_SAMPLE


def test_without_a_model_of_your_own_model_py_writes_with_the_shipped_one(tmp_path):
    checkout = make_checkout(tmp_path, shipped=True)
    result = run_script("MODEL.py", "--num-tokens", "20", cwd=checkout, repo=checkout)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) > 20
    path = checkout / "pretrained" / "shakespeare.pt"
    assert f"model: {path} (shipped with ScratchGPT;" in result.stderr


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--prompt-file", "no-such-prompt.txt"], "no-such-prompt.txt"),
        (["--chat", "ROMEO", "--as", "ROMEO"], "both name ROMEO"),
    ],
)
def test_bad_input_with_the_shipped_model_is_one_line(flags, fragment, tmp_path):
    # Which model writes is said once every input is checked, not before an error.
    checkout = make_checkout(tmp_path, shipped=True)
    result = run_script("MODEL.py", *flags, cwd=checkout, repo=checkout)
    assert_clean_error(result, fragment)


def test_juliet_answers_each_line_with_a_speech_that_ends_at_its_end(tmp_path):
    checkout = make_checkout(tmp_path, shipped=True)
    result = subprocess.run(
        [sys.executable, "MODEL.py", "--chat", "JULIET", "--as", "ROMEO", "--seed", "1"],
        input="Good morrow, fair lady.\nWilt thou walk with me?\n",
        cwd=checkout, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    turns = [part.split(":\n", 1) for part in result.stdout.removesuffix("\n\n").split("\n\n")]
    assert [name for name, _ in turns] == ["ROMEO", "JULIET", "ROMEO", "JULIET"]
    assert all(speech.strip() for _, speech in turns)
    assert "before its end" not in result.stderr  # neither reply was cut by the cap


def test_your_own_model_comes_before_the_shipped_one(tmp_path):
    checkout = make_checkout(tmp_path, shipped=True)
    own = checkout / "checkpoints" / "shakespeare.pt"
    own.parent.mkdir()
    own.write_bytes(shipped.MODEL_PATH.read_bytes())
    result = run_script("MODEL.py", "--num-tokens", "20", cwd=checkout, repo=checkout)
    assert result.returncode == 0, result.stderr
    assert f"model: {own} (your own;" in result.stderr


FINE_TUNE = ["--init-from", str(shipped.MODEL_PATH), "--data", "corpus.txt"]


def file_hash() -> str:
    return hashlib.sha256(shipped.MODEL_PATH.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "script, flags",
    [
        ("bigram.py", ["--out", str(shipped.MODEL_PATH), "--data", "corpus.txt", *TINY_RUN]),
        ("bigram.py", [*FINE_TUNE, "--out", str(shipped.MODEL_PATH.with_name("tuned.pt"))]),
        (
            "MODEL.py",
            ["--output", str(shipped.MODEL_PATH.with_name("sample.txt")), "--num-tokens", "5"],
        ),
    ],
)
def test_no_command_writes_into_the_shipped_models_folder(script, flags, tmp_path):
    write_corpus(tmp_path / "corpus.txt")
    before = file_hash()
    result = run_script(script, *flags, cwd=tmp_path)
    assert_clean_error(result, "the model shipped with ScratchGPT, which no command writes")
    assert file_hash() == before
    assert sorted(p.name for p in shipped.MODEL_PATH.parent.iterdir()) == [
        "README.md", "shakespeare.pt"
    ]  # fmt: skip


def test_export_refuses_the_shipped_folder_and_an_existing_file(tmp_path, capsys):
    source = str(shipped.MODEL_PATH)
    assert shipped.main([source, str(shipped.MODEL_PATH.with_name("copy.pt"))]) == 1
    assert "which no command writes" in capsys.readouterr().err
    (tmp_path / "taken.pt").write_bytes(b"mine")
    assert shipped.main([source, str(tmp_path / "taken.pt")]) == 1
    assert "exists: give the name of a new file" in capsys.readouterr().err
    assert (tmp_path / "taken.pt").read_bytes() == b"mine"


def test_export_keeps_the_weights_for_generation_and_drops_the_training_state(tmp_path):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("to be or not to be\n" * 200, encoding="utf-8")
    run = tmp_path / "run.pt"
    flags = ["--data", str(corpus_file), "--out", str(run), "--max-iters", "2", *TINY_RUN]
    assert bigram.main(flags) == 0
    assert shipped.main([str(run), str(tmp_path / "weights.pt")]) == 0
    full = checkpoint.load_checkpoint(run)
    light = checkpoint.load_checkpoint(tmp_path / "weights.pt")
    assert not any(key in light for key in checkpoint.RESUME_KEYS)
    for name, weight in full["model"].items():
        torch.testing.assert_close(light["model"][name].float(), weight, atol=1e-3, rtol=1e-3)


def test_a_fine_tune_starts_from_the_shipped_model(tmp_path):
    corpus_file = tmp_path / "lines.txt"
    corpus_file.write_text("ROMEO:\nWhat light through yonder window breaks?\n\n" * 300)
    flags = ["--init-from", str(shipped.MODEL_PATH), "--data", str(corpus_file)]
    flags += ["--out", str(tmp_path / "tuned.pt"), "--max-iters", "2", "--eval-interval", "2"]
    flags += ["--batch-size", "4", "--eval-iters", "1", "--sample-chars", "0", "--dtype", "float32"]
    assert bigram.main(flags) == 0
    tuned = checkpoint.load_checkpoint(tmp_path / "tuned.pt")
    assert tuned["iter"] == 2
    assert tuned["vocab"] == checkpoint.load_checkpoint(shipped.MODEL_PATH)["vocab"]
