"""torchrun and DDP on the CPU with gloo: the same update, one checkpoint, a clean failure."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import REPO, TINY_RUN, write_corpus
from torch.nn.parallel import DistributedDataParallel as DDP

from bigram import (
    ARCHITECTURES,
    GPTConfig,
    GPTLanguageModel,
    TrainConfig,
    model_settings,
    train_on_batches,
)
from scratchgpt import distributed
from scratchgpt.checkpoint import load_checkpoint
from scratchgpt.distributed import Distributed
from scratchgpt.optimizers import make_optimizers, make_scaler

CONFIG = GPTConfig(vocab_size=9, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0)


def fresh_model_and_optimizer(arch: str = "classic"):
    """A model and its optimizers (AdamW; for the modern architecture, Muon beside it)."""
    torch.manual_seed(0)
    recipe = ARCHITECTURES[arch]
    model = GPTLanguageModel(
        replace(CONFIG, **{k: recipe[k] for k in model_settings(CONFIG) if k in recipe})
    )
    config = TrainConfig(lr=1e-2, optimizer=recipe["optimizer"])
    return model, make_optimizers(model, config, torch.device("cpu"))


def fixed_batches(n: int):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(CONFIG.vocab_size, (n, 4, CONFIG.block_size + 1), generator=generator)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def one_ddp_step(rank: int, world_size: int, port: int, out: str, arch: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model, optimizer = fresh_model_and_optimizer(arch)
    cpu, fp32 = torch.device("cpu"), torch.float32
    batch = fixed_batches(2)[rank]  # each rank its own half of the batch
    wrapped = DDP(model)
    train_on_batches(wrapped, optimizer, make_scaler(cpu, fp32), [batch], 1.0, cpu, fp32)
    if rank == 0:
        torch.save(model.state_dict(), out)
    del wrapped  # as bigram.train does: its cycles are freed before the process group goes
    distributed.leave_distributed(Distributed(rank, rank, world_size))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_two_processes_take_the_same_step_as_one_with_the_whole_batch(tmp_path, arch):
    out = tmp_path / "ddp.pt"
    mp.spawn(one_ddp_step, args=(2, free_port(), str(out), arch), nprocs=2, join=True)
    ddp_weights = torch.load(out, weights_only=True)

    (x0, y0), (x1, y1) = fixed_batches(2)
    cpu, fp32 = torch.device("cpu"), torch.float32
    whole, optimizer = fresh_model_and_optimizer(arch)
    scaler = make_scaler(cpu, fp32)
    train_on_batches(
        whole, optimizer, scaler, [(torch.cat([x0, x1]), torch.cat([y0, y1]))], 1.0, cpu, fp32
    )
    accumulated, optimizer = fresh_model_and_optimizer(arch)  # --grad-accum 2 in one process
    train_on_batches(accumulated, optimizer, scaler, [(x0, y0), (x1, y1)], 1.0, cpu, fp32)
    for name, weight in whole.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], weight)
        torch.testing.assert_close(accumulated.state_dict()[name], weight)


def torchrun(tmp_path: Path, *flags: str) -> subprocess.Popen:
    write_corpus(tmp_path / "c.txt")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    script = [str(REPO / "bigram.py"), "--data", "c.txt", "--out", "run.pt", *TINY_RUN, *flags]
    return subprocess.Popen(
        command + script, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_torchrun_trains_and_rank_0_saves_one_checkpoint(tmp_path):
    job = torchrun(tmp_path, "--max-iters", "6", "--eval-interval", "3", "--grad-accum", "2")
    stdout, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr
    assert (
        "tokens per optimizer step: 512 = batch 8 x block 16 x grad-accum 2 x processes 2" in stdout
    )
    assert stdout.count("best val loss") == 1  # printed by rank 0 only
    assert load_checkpoint(tmp_path / "run.pt")["iter"] in (3, 6)
    written = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".png")  # and a picture
    assert written == ["c.txt", "run.pt", "run.pt.jsonl"]


def worker_pids(parent: int) -> list[int]:
    """The processes torchrun started (children of the launcher)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def test_a_killed_rank_ends_the_job_and_the_checkpoint_stays_loadable(tmp_path):
    job = torchrun(tmp_path, "--max-iters", "100000", "--eval-interval", "5")
    deadline = time.monotonic() + 120
    while not (tmp_path / "run.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "run.pt").exists(), "the job never saved a checkpoint"
    os.kill(max(worker_pids(job.pid)), signal.SIGKILL)
    job.communicate(timeout=120)
    assert job.returncode != 0
    assert load_checkpoint(tmp_path / "run.pt")["iter"] % 5 == 0


def test_torchrun_resume_continues_the_saved_run(tmp_path):
    first = torchrun(tmp_path, "--max-iters", "4", "--eval-interval", "2")
    assert first.communicate(timeout=240) and first.returncode == 0
    second = torchrun(tmp_path, "--max-iters", "8", "--eval-interval", "2", "--resume")
    stdout, stderr = second.communicate(timeout=240)
    assert second.returncode == 0, stderr
    log = [json.loads(line) for line in (tmp_path / "run.pt.jsonl").read_text().splitlines()]
    evaluations = [r["iter"] for r in log if "val_loss" in r]
    assert evaluations == [2, 4, 6, 8]  # continued from step 4, not from scratch
    assert load_checkpoint(tmp_path / "run.pt")["config"]["max_iters"] == 8


def test_an_enabled_grad_scaler_takes_the_same_step():
    """float16 training scales the loss; the update itself must not change (checked on the CPU)."""
    cpu, fp32 = torch.device("cpu"), torch.float32
    models = []
    for scaler in (make_scaler(cpu, fp32), torch.amp.GradScaler("cpu", init_scale=1024.0)):
        model, optimizer = fresh_model_and_optimizer()
        train_on_batches(model, optimizer, scaler, fixed_batches(1), 1.0, cpu, fp32)
        models.append(model.state_dict())
    for name, weight in models[0].items():
        torch.testing.assert_close(models[1][name], weight)


def test_a_float16_overflow_skips_the_step_of_every_optimizer():
    """An inf in AdamW's gradients (the head's) must stop Muon's step too, and lower the scale."""
    cpu, fp32 = torch.device("cpu"), torch.float32
    model, optimizers = fresh_model_and_optimizer("modern")
    before = {name: weight.clone() for name, weight in model.state_dict().items()}
    model.lm_head.weight.register_hook(lambda grad: grad * float("inf"))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train_on_batches(model, optimizers, scaler, fixed_batches(1), 1.0, cpu, fp32)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, before[name]), f"{name} moved on an overflowed step"
    assert scaler.get_scale() < 1024.0
