"""MODEL.py: streaming, seeds, prompts, batches and output files, as a user runs it."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from support import REPO, TINY_RUN, assert_clean_error, main_error, run_script, write_corpus

import bigram
import MODEL
from scratchgpt import machine, shipped
from scratchgpt.checkpoint import load_checkpoint, model_from_checkpoint


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
    # float32 weights: bf16 ones take different kernels on the two paths (bounded by the tests of
    # the distributions below), and a near-tie could then pick another character.
    flags = ["--prompt", "KIN", "--num-tokens", "12", "--temperature", "0", "--weights", "float32"]
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
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--temperature", "inf"], "--temperature must be a finite number"),
        (["--seed", "-1"], "--seed must be between 0 and"),
        (["--num-tokens", "99999999999999999999", "--no-stream"], "the limit is 10,000,000"),
        (["--num-tokens", "5000000", "--num-samples", "3"], "the limit is 10,000,000"),
    ],
)
def test_bad_sampling_settings_are_rejected(checkpoint, capsys, flags, message):
    assert message in main_error(MODEL.main, ["--checkpoint", str(checkpoint), *flags], capsys)


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


@pytest.mark.parametrize("prompt_file", ["/dev/zero", "pipe"])
def test_a_prompt_file_that_never_ends_is_refused_at_once(checkpoint, tmp_path, prompt_file):
    if prompt_file == "pipe":
        prompt_file = tmp_path / "pipe"
        os.mkfifo(prompt_file)  # no writer: reading it would wait for ever
    flags = ["--checkpoint", str(checkpoint), "--prompt-file", str(prompt_file)]
    result = run_script("MODEL.py", *flags)
    assert_clean_error(result, "is not a regular file")


def test_of_two_commands_writing_one_new_output_the_second_is_refused(
    checkpoint, tmp_path, capsys, monkeypatch
):
    # The other command's file appears after this one checked the name and before it writes.
    output = tmp_path / "same.txt"
    real_generate = MODEL.generate_tokens

    def generate_while_another_writes(*args, **kwargs):
        output.write_text("the other command's text")
        yield from real_generate(*args, **kwargs)

    monkeypatch.setattr(MODEL, "generate_tokens", generate_while_another_writes)
    argv = ["--checkpoint", str(checkpoint), "--num-tokens", "5", "--output", str(output)]
    assert "was created by another program" in main_error(MODEL.main, argv, capsys)
    assert output.read_text() == "the other command's text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.txt"]


def test_output_never_replaces_an_input_or_an_existing_file_unasked(checkpoint, tmp_path, capsys):
    saved = checkpoint.read_bytes()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING")
    sample = tmp_path / "sample.txt"
    sample.write_text("an earlier sample")
    base = ["--checkpoint", str(checkpoint), "--num-tokens", "5", "--prompt-file", str(prompt)]
    for output, message in [
        (checkpoint, "is the checkpoint"),
        (prompt, "is the prompt file"),
        (sample, "exists: pass --overwrite"),
        (tmp_path, "is a folder"),
    ]:
        for extra in ([], ["--overwrite"]) if output != sample else ([],):
            argv = [*base, "--output", str(output), *extra]
            assert message in main_error(MODEL.main, argv, capsys)
    assert checkpoint.read_bytes() == saved and prompt.read_text() == "KING"
    assert sample.read_text() == "an earlier sample"
    assert MODEL.main([*base, "--output", str(sample), "--overwrite"]) == 0
    assert sample.read_text().startswith("KING") and len(sample.read_text()) == 4 + 5 + 1


def test_text_the_console_cannot_show_is_replaced_not_fatal(tmp_path):
    corpus = tmp_path / "emoji.txt"
    corpus.write_text("café au lait 😀, naïve résumé.\n" * 400, encoding="utf-8")
    out = tmp_path / "emoji.pt"
    flags = ["--max-iters", "2", "--eval-interval", "2", *TINY_RUN]
    assert bigram.main(["--data", str(corpus), "--out", str(out), *flags]) == 0
    for encoding in ("cp1252", "ascii"):
        result = subprocess.run(
            [sys.executable, str(REPO / "MODEL.py"), "--checkpoint", str(out), "--prompt",
             "😀 é", "--num-tokens", "200"],
            capture_output=True, env={**os.environ, "PYTHONIOENCODING": encoding}, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        shown = result.stdout.decode(encoding)
        assert shown.startswith("? é" if encoding == "cp1252" else "? ?")  # what it cannot show'


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: c["model"].pop("lm_head.weight"), "weights do not fit"),
        (lambda c: c["model"].update(x=1), "weights do not fit"),
        (lambda c: c["model_args"].update(n_embd=32), "weights do not fit"),
        (lambda c: c["model_args"].update(model_type="rnn"), "unknown model type 'rnn'"),
        (lambda c: c["model_args"].update(n_layer="2"), "n_layer should be int"),
        (lambda c: c.update(vocab="abc"), "vocabulary is not a list of characters"),
        (lambda c: c["vocab"].pop(), "vocabulary has"),
        (lambda c: c["model_args"].update(n_layer=10**9), "GiB for one sequence, more than the"),
    ],
)
def test_checkpoints_that_load_but_are_wrong_are_one_line_errors(
    checkpoint, tmp_path, capsys, damage, message
):
    tampered = torch.load(checkpoint, weights_only=True)
    damage(tampered)
    torch.save(tampered, tmp_path / "bad.pt")
    argv = ["--checkpoint", str(tmp_path / "bad.pt"), "--num-tokens", "5"]
    assert message in main_error(MODEL.main, argv, capsys)


def test_a_prompt_file_from_windows_reads_as_it_looks(checkpoint, tmp_path):
    (tmp_path / "prompt.txt").write_bytes("\ufeffKING:\r\n".encode("utf-8"))
    text = generate(checkpoint, "--prompt-file", str(tmp_path / "prompt.txt"), "--num-tokens", "5")
    assert text.startswith("KING:\n") and "\r" not in text and "\ufeff" not in text


def test_bf16_weights_change_the_next_character_distribution_by_rounding_only(checkpoint):
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    context = torch.randint(0, model.config.vocab_size, (4, model.config.block_size))
    with torch.no_grad():
        p32 = model(context)[0].softmax(-1)
        p16 = bf16(context)[0].float().softmax(-1)
    total_variation = 0.5 * (p32 - p16).abs().sum(-1)
    assert total_variation.max() < 0.02  # bf16 keeps 8 bits of mantissa: about 0.4% per weight


def test_one_sample_bf16_steps_change_the_distribution_by_rounding_only(checkpoint):
    # One sample's steps take another kernel (PyTorch's matrix-vector product, not oneDNN's).
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    context = torch.randint(0, model.config.vocab_size, (1, model.config.block_size))
    cache = bigram.KVCache(model.config, 1, "cpu", machine.cache_dtype(bf16))
    with torch.no_grad():
        p32 = model(context)[0][0].softmax(-1)
        bf16(context[:, :8], kv_cache=cache)
        steps = []
        for t in range(8, context.shape[1]):
            with machine.matrix_vector_kernels(bf16, context.shape[0]):
                steps.append(bf16(context[:, t : t + 1], kv_cache=cache)[0][0, -1])
    p16 = torch.stack(steps).float().softmax(-1)
    total_variation = 0.5 * (p32[8:] - p16).abs().sum(-1)
    assert total_variation.max() < 0.02


@pytest.fixture
def bf16_cpu(tmp_path, monkeypatch):
    """A CPU with native bf16 and a cache of this test's own."""
    monkeypatch.setattr(machine, "bf16_is_native", lambda: True)
    monkeypatch.setattr(machine, "cache_path", lambda: tmp_path / "machine.json")


def generated_in(faster: torch.dtype):
    """A fake generation timer: a step with faster's weights takes half the time."""
    return lambda m, batch: 1.0 if next(m.parameters()).dtype == faster else 2.0


@pytest.mark.parametrize("faster", [torch.float32, torch.bfloat16])
def test_default_weights_are_the_ones_that_generate_faster_here(checkpoint, bf16_cpu, faster):
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    picked, why = machine.generation_weights(model, "auto", generated_in(faster))
    assert next(picked.parameters()).dtype == faster
    assert why.startswith(f"weights: {str(faster)[6:]}, 1000.0 ms a step against 2000.0")


def test_the_timing_is_kept_so_a_seed_writes_the_same_text_on_every_run(checkpoint, bf16_cpu):
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    machine.generation_weights(copy.deepcopy(model), "auto", generated_in(torch.bfloat16))
    never_timed = lambda m, batch: pytest.fail("timed again")
    picked, why = machine.generation_weights(copy.deepcopy(model), "auto", never_timed)
    assert next(picked.parameters()).dtype == torch.bfloat16 and "timings cached" in why


def test_cached_float32_weights_make_no_bf16_copy(checkpoint, bf16_cpu, monkeypatch):
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    machine.generation_weights(copy.deepcopy(model), "auto", generated_in(torch.float32))
    monkeypatch.setattr(machine.copy, "deepcopy", lambda m: pytest.fail("a bf16 copy was made"))
    picked, why = machine.generation_weights(model, "auto", generated_in(torch.float32))
    assert picked is model and "timings cached" in why


def test_weights_fastest_times_them_again(checkpoint, bf16_cpu):
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    machine.generation_weights(copy.deepcopy(model), "auto", generated_in(torch.bfloat16))
    picked, _ = machine.generation_weights(model, "fastest", generated_in(torch.float32))
    assert next(picked.parameters()).dtype == torch.float32


def test_each_batch_size_is_timed_on_its_own(checkpoint, bf16_cpu):
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    machine.generation_weights(copy.deepcopy(model), "auto", generated_in(torch.bfloat16), 1)
    picked, _ = machine.generation_weights(model, "auto", generated_in(torch.float32), 32)
    assert next(picked.parameters()).dtype == torch.float32


def test_where_bf16_is_emulated_generation_keeps_float32_untimed(checkpoint, monkeypatch):
    monkeypatch.setattr(machine, "bf16_is_native", lambda: False)
    model = model_from_checkpoint(load_checkpoint(checkpoint), bigram.MODEL_TYPES).eval()
    never_timed = lambda m, batch: pytest.fail("timed")
    picked, why = machine.generation_weights(model, "auto", never_timed)
    assert next(picked.parameters()).dtype == torch.float32 and why is None


def test_an_output_ending_in_a_slash_is_a_folder(checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoint), "--num-tokens", "5", "--output", f"{tmp_path}/out/"]
    line = main_error(MODEL.main, argv, capsys)
    assert "is a folder; give a file path such as" in line and not (tmp_path / "out").exists()


def test_an_output_name_too_long_for_the_file_system_is_one_line(checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / ("x" * 300))]
    assert "longer than the file system allows" in main_error(MODEL.main, argv, capsys)


def test_samples_whose_caches_do_not_fit_are_refused_before_generating(capsys):
    # Within the character limit (10M), yet a KV cache each: the shipped model's 10M caches
    # (4 layers of 128 x 256 keys and values) take about 10 TB.
    argv = [
        "--checkpoint",
        str(shipped.MODEL_PATH),
        "--num-samples",
        "10000000",
        "--num-tokens",
        "1",
    ]
    line = main_error(MODEL.main, argv, capsys)
    assert "10,000,000 sequences at once" in line and "ask for fewer --num-samples" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_standard_output_is_one_line_not_a_traceback(checkpoint):
    argv = [sys.executable, str(REPO / "MODEL.py"), "--checkpoint", str(checkpoint)]
    with open("/dev/full", "w") as full:
        result = subprocess.run([*argv, "--num-tokens", "50"], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: standard input or output failed: No space left on device"]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
