"""MODEL.py: streaming, seeds, prompts, batches and output files, as a user runs it."""

import pytest
from support import TINY_RUN, assert_clean_error, run_script, write_corpus

import bigram


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    corpus = write_corpus(folder / "corpus.txt")
    out = folder / "model.pt"
    flags = ["--max-iters", "20", "--eval-interval", "20", "--lr", "3e-3", *TINY_RUN]
    assert bigram.main(["--data", str(corpus), "--out", str(out), *flags]) == 0
    return out


def generate(checkpoint, *flags: str):
    result = run_script("MODEL.py", "--checkpoint", str(checkpoint), *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_streamed_and_unstreamed_text_are_the_same_for_a_seed(checkpoint):
    streamed = generate(checkpoint, "--num-tokens", "300", "--seed", "3")
    assert streamed == generate(checkpoint, "--num-tokens", "300", "--seed", "3", "--no-stream")
    assert streamed != generate(checkpoint, "--num-tokens", "300", "--seed", "4")
    assert len(streamed) == 1 + 300 + 1  # the default prompt (a newline), the text, a newline


def test_kv_cache_and_full_recompute_write_the_same_text(checkpoint):
    # 300 tokens run far past block_size 16, where the two paths see different context lengths,
    # so compare inside one window: greedy decoding of 12 tokens after a 3-character prompt.
    flags = ["--prompt", "KIN", "--num-tokens", "12", "--temperature", "0"]
    assert generate(checkpoint, *flags) == generate(checkpoint, *flags, "--no-kv-cache")


def test_prompt_is_continued_and_written_to_the_output_file(checkpoint, tmp_path):
    out = tmp_path / "sample.txt"
    text = generate(checkpoint, "--prompt", "KING:", "--num-tokens", "40", "--output", str(out))
    assert text.startswith("KING:")
    assert out.read_text() == text


def test_prompt_file_and_several_samples(checkpoint, tmp_path):
    (tmp_path / "prompt.txt").write_text("QUEEN:\n")
    flags = ["--prompt-file", str(tmp_path / "prompt.txt"), "--num-tokens", "30"]
    text = generate(checkpoint, *flags, "--num-samples", "3", "--top-k", "5", "--top-p", "0.9")
    samples = text.split("--- sample ")[1:]
    assert len(samples) == 3 and all("\nQUEEN:\n" in s for s in samples)


def test_prompt_characters_outside_the_vocabulary_are_named(checkpoint):
    result = run_script("MODEL.py", "--checkpoint", str(checkpoint), "--prompt", "KING 日本")
    assert_clean_error(result, "'日'", "'本'")


def test_missing_checkpoint_says_how_to_train_one(tmp_path):
    result = run_script("MODEL.py", "--checkpoint", str(tmp_path / "none.pt"))
    assert_clean_error(result, "not found", "python bigram.py")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "0"], "--top-k"),
    ],
)
def test_bad_sampling_settings_are_rejected(checkpoint, flags, message):
    assert_clean_error(run_script("MODEL.py", "--checkpoint", str(checkpoint), *flags), message)


def test_empty_prompt_file_and_missing_output_folder(checkpoint, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run_script(
        "MODEL.py", "--checkpoint", str(checkpoint), "--prompt-file", str(tmp_path / "empty.txt")
    )
    assert_clean_error(result, "is empty")
    result = run_script(
        "MODEL.py", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "no/x.txt")
    )
    assert_clean_error(result, "does not exist")
