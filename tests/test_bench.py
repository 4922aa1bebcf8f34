"""bench.py: it runs end to end on a tiny configuration and reports every section.

Timings are never asserted: they depend on the machine and on what else runs on it.
"""

import json
import subprocess
import sys

import torch
from support import REPO

import bench
import bigram
from scratchgpt import machine
from scratchgpt.optimizers import make_optimizers

KEYS = {
    "machine": {"cpu", "cores", "torch_threads", "torch", "native_bf16"},
    "config": {"n_layer", "n_head", "n_embd", "block_size", "batch_size", "dropout"},
    "matmul": {"float32_gflops", "sizes"},
    "train": {"dtype", "tokens_per_s", "ms_per_step", "mfu", "flops_per_token", "original"}
    | {"parts", "warnings", "optimizers"},
    "generate": {"kv_cache_chars_per_s", "no_cache_chars_per_s", "original_chars_per_s", "batch"},
    "corpus": {"original", "load_reddit"},
    "choices": {"training", "weights"},
}


def test_tiny_run_writes_every_section_to_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench.py"), "--tiny", "--json", str(out)],
        cwd=tmp_path,  # bench.py must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    for section, keys in KEYS.items():
        assert keys <= results[section].keys(), section
    assert results["train"]["tokens_per_s"] > 0 and 0 < results["train"]["mfu"]
    assert {"tokens_per_s", "mfu"} <= results["train"]["original"].keys()
    native = {"float32", "bfloat16"} if machine.bf16_is_native() else {"float32"}
    assert set(results["generate"]["batch"]["2"]) == native
    assert set(results["train"]["parts"]) == {"forward", "backward", "optimizer"}
    corpus = results["corpus"]
    assert corpus["original"]["peak_rss_mb"] > 0 and corpus["original"]["tokens"] > 0
    if corpus["load_reddit"]["available"]:
        assert corpus["load_reddit"]["mb_per_s"] > 0 and corpus["net_rss_per_mb_ratio"] > 0
    for section in ("matmul peak", "train ScratchGPT", "generate 1 sample", "corpus"):
        assert section in result.stdout  # the table
    assert results["choices"]["training"].startswith("machine: ")
    assert results["choices"]["weights"].startswith("weights: ")
    assert results["choices"]["training"] in result.stdout


def test_only_runs_the_sections_asked_for(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--only", "matmul,generate", "--json", str(out)]) == 0
    assert json.loads(out.read_text()).keys() == {"machine", "config", "matmul", "generate"}


def test_corpus_section_reports_a_failed_load_reddit(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REDDIT_PROGRAM", "raise SystemExit('no archive tool')")
    result = bench.bench_corpus(0.2, 0.1, tmp_path)
    reason = "load_reddit failed: exit 1: no archive tool"
    assert result["load_reddit"] == {"available": False, "reason": reason}
    assert result["original"]["tokens"] > 0
    rows = bench.table_rows({"corpus": result})
    assert ("corpus load_reddit", "unavailable", reason) in rows


def test_synthetic_text_is_whole_lines_of_utf8(tmp_path):
    path = tmp_path / "text.txt"
    size_mb = bench.write_synthetic_text(path, 0.3)
    data = path.read_bytes()
    assert 0.2 < size_mb <= 0.3 and data.endswith(b"\n")
    data.decode("utf-8")  # never cut inside a character


def test_without_bf16_instructions_nothing_is_timed_in_bf16(tmp_path, monkeypatch):
    # Emulated bf16 is many times slower than float32: timing it would take the whole run.
    monkeypatch.setattr(machine, "bf16_is_native", lambda: False)
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--only", "matmul,train,generate", "--skip-original", "--json", str(out)]
    assert bench.main(argv) == 0
    results = json.loads(out.read_text())
    assert "bfloat16" not in json.dumps(results)
    assert results["train"]["dtype"] == "float32"
    assert results["train"]["optimizers"][-1] == "scratchgpt.optimizers.Muon"  # float32 iteration


def parts(forward_ms: float, backward_ms: float, optimizer_ms: float) -> dict:
    """Step parts as bench.time_parts reports them, at 1, 2 and 0.5 GFLOP."""
    timed = {"forward": (forward_ms, 1.0), "backward": (backward_ms, 2.0),
             "optimizer": (optimizer_ms, 0.5)}  # fmt: skip
    return {n: {"ms": ms, "gflop": g, "gflops": g / ms * 1000} for n, (ms, g) in timed.items()}


def test_a_part_far_out_of_line_with_its_flops_is_a_warning():
    assert bench.part_warnings(parts(100, 200, 60)) == []  # in line with their FLOPs
    slow = bench.part_warnings(parts(180, 480, 5200))  # torch's Muon in emulated bf16
    assert len(slow) == 2 and all(line.startswith("warning: the optimizer") for line in slow)
    assert "longer than forward and backward together" in slow[1]
    assert bench.part_warnings(parts(1, 2, 4)) == []  # a tiny model: overhead, not arithmetic


def test_the_step_timed_in_parts_is_the_training_step():
    """The same update as bigram.train_on_batches, with a float16-style loss scale: the gradients
    are unscaled before they are clipped."""
    shape = bench.TINY | {"dropout": 0.0}  # no random masks: the two steps are comparable
    config, device = bigram.TrainConfig(**shape, vocab_size=bench.VOCAB_SIZE), torch.device("cpu")
    batch = tuple(torch.randint(0, bench.VOCAB_SIZE, (4, 32)) for _ in range(2))
    weights = []
    for timed_in_parts in (False, True):
        torch.manual_seed(0)
        model = bench.scratch_model(shape)
        optimizers = make_optimizers(model, config, device)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        if timed_in_parts:
            bench.step_in_parts(model, optimizers, scaler, batch, config, torch.float32)
        else:
            bigram.train_on_batches(model, optimizers, scaler, [batch], config.grad_clip, device,
                              torch.float32)  # fmt: skip
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
