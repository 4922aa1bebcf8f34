"""bigram.py's errors: each is one line on stderr and a non-zero exit, and nothing good is lost."""

import pytest
import torch
from support import TINY_RUN, assert_clean_error, run_script, write_corpus

TRAIN = [*TINY_RUN, "--max-iters", "2", "--eval-interval", "2"]


def train(tmp_path, *flags: str):
    return run_script("bigram.py", "--out", str(tmp_path / "run.pt"), *TRAIN, *flags, cwd=tmp_path)


def test_missing_default_corpus_offline_says_where_to_put_it(tmp_path):
    offline = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = run_script("bigram.py", *TRAIN, cwd=tmp_path, env=offline)
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
    assert_clean_error(train(tmp_path, "--data", "other.txt", "--resume"), "different vocabulary")
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
