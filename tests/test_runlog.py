"""The record of a run: its log's lines and names, --plot, and the progress bar."""

import math
import os
import subprocess
import sys

import pytest
from support import REPO, fill, main_error

import bigram
from scratchgpt import runlog
from scratchgpt.cli import UserError


def test_a_runs_log_and_picture_are_named_after_its_checkpoint(tmp_path):
    assert runlog.log_path(tmp_path / "run.pt") == tmp_path / "run.pt.jsonl"
    assert runlog.picture_path(tmp_path / "run.pt") == tmp_path / "run.pt.png"


def test_a_training_log_is_empty_or_holds_a_line_a_run_wrote(tmp_path):
    log = tmp_path / "run.pt.jsonl"
    for text, is_log in [("", True), ('{"iter": 2, "val_loss": 1.0}\n', True),
                         ("my notes\n", False), ('{"name": "x"}\n', False)]:  # fmt: skip
        log.write_text(text)
        assert runlog.is_training_log(log) == is_log, text


def test_resume_drops_log_lines_past_the_checkpoint_its_summary_and_cut_lines(tmp_path):
    log = tmp_path / "run.pt.jsonl"
    evaluations = [f'{{"iter": {i}, "val_loss": 2.0}}\n' for i in (5, 10, 15)]
    summary = '{"iter": 10, "exhaustive_val_loss": 2.0}\n'  # the end of the interrupted run
    log.write_text("".join(evaluations) + summary + '{"iter": 2')  # killed mid-write
    runlog.trim_log(log, 10)
    assert log.read_text() == "".join(evaluations[:2])


# The kernel refuses to grow a file past RLIMIT_FSIZE as it refuses to fill a full disk: the
# write fails part-way (EFBIG rather than ENOSPC). No root, no tmpfs needed.
FULL_DISK_APPEND = """
import resource, signal, sys
from pathlib import Path
from scratchgpt import runlog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails instead of killing us
log = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (log.stat().st_size + 10, resource.RLIM_INFINITY))
try:
    runlog.append_log(log, {"iter": 20, "val_loss": 1.5, "note": "x" * 100})
except runlog.UserError as e:
    print(e)
"""


def test_a_log_line_that_does_not_fit_is_cut_off_again(tmp_path):
    log = tmp_path / "run.pt.jsonl"
    runlog.append_log(log, {"iter": 10, "val_loss": 2.0}, new=True)
    before = log.read_text()
    result = subprocess.run([sys.executable, "-c", FULL_DISK_APPEND, str(log)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "cannot write the training log" in result.stdout, result.stderr
    assert log.read_text() == before  # ends at its last whole record: --resume reads it
    assert runlog.is_training_log(log)


def test_a_log_line_on_a_full_file_system_is_cut_off_again(small_disk):
    # Real: a tmpfs filled to its last byte; the line needs a page more than the log has.
    log = small_disk / "run.pt.jsonl"
    runlog.append_log(log, {"iter": 10, "val_loss": 2.0}, new=True)
    before = log.read_text()
    fill(small_disk)
    with pytest.raises(UserError, match="cannot write the training log .*No space left"):
        runlog.append_log(log, {"iter": 20, "val_loss": 1.5, "note": "x" * 5000})
    assert log.read_text() == before and runlog.is_training_log(log)


def test_a_log_that_cannot_be_rewritten_on_a_full_file_system_is_kept(small_disk):
    log = small_disk / "run.pt.jsonl"
    log.write_text('{"iter": 5, "val_loss": 2.0}\n{"iter": 10, "val_loss": 1.9}\n' * 200)
    before = log.read_text()
    fill(small_disk)
    with pytest.raises(UserError, match="cannot rewrite the training log .* it is unchanged"):
        runlog.trim_log(log, 5)
    assert log.read_text() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "run.pt.jsonl"]  # no copy


def test_a_log_that_cannot_be_rewritten_on_resume_is_one_clear_error(tmp_path, monkeypatch):
    # Simulated: the temporary copy's write fails as on a full disk.
    log = tmp_path / "run.pt.jsonl"
    log.write_text('{"iter": 5, "val_loss": 2.0}\n{"iter": 10, "val_loss": 1.9}\n')

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runlog, "atomic_file", full_disk)
    with pytest.raises(UserError, match="cannot rewrite the training log .* it is unchanged"):
        runlog.trim_log(log, 5)
    assert 'iter": 10' in log.read_text()


def test_a_log_set_aside_takes_the_first_free_name(tmp_path):
    (tmp_path / "run.pt.earlier-1.jsonl").write_text("the first one set aside\n")
    log = tmp_path / "run.pt.jsonl"
    log.write_text('{"iter": 5, "val_loss": 2.0}\n')
    assert runlog.set_aside(log) == tmp_path / "run.pt.earlier-2.jsonl"
    assert not log.exists() and "iter" in (tmp_path / "run.pt.earlier-2.jsonl").read_text()


def test_a_sparse_terabyte_log_is_refused_by_its_size(tmp_path):
    log = tmp_path / "run.pt.jsonl"
    with log.open("wb") as f:
        f.truncate(1 << 40)
    with pytest.raises(UserError, match="training log .* bytes, more than"):
        runlog.read_log(log)


def test_plot_refuses_what_is_not_a_training_log_in_one_line(tmp_path, capsys):
    (tmp_path / "binary.pt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "odd.jsonl").write_text('{"val_loss": 1.0}\n{"iter": 2, "val_loss": "x"}\n')
    for log in ("binary.pt", "odd.jsonl", "missing.jsonl"):
        line = main_error(bigram.main, ["--plot", str(tmp_path / log)], capsys)
        assert "--plot" in line


def evaluation_line(iter, loss=2.0, elapsed=60.0) -> str:
    return f'{{"iter": {iter}, "train_loss": {loss}, "val_loss": {loss}, "elapsed_s": {elapsed}}}\n'


@pytest.mark.parametrize("line", [evaluation_line("9" * 401), evaluation_line(5, loss=1e308),
                                  evaluation_line(5, elapsed=1e308)])  # fmt: skip
def test_plot_skips_numbers_no_run_writes(tmp_path, capsys, line):
    log = tmp_path / "damaged.jsonl"
    log.write_text(line)
    assert "holds no evaluation" in main_error(bigram.main, ["--plot", str(log)], capsys)
    log.write_text(evaluation_line(5) + line + evaluation_line(10, loss=1.8))
    assert bigram.main(["--plot", str(log)]) == 0
    assert runlog.is_run_picture(runlog.comparison_path([log]))


def test_plot_draws_a_log_whose_name_is_not_utf8(tmp_path):
    log = tmp_path / "caf\udce9.pt.jsonl"  # the byte 0xE9 of a Latin-1 name, as Python holds it
    log.write_text(evaluation_line(5) + evaluation_line(10, loss=1.8))
    assert bigram.main(["--plot", str(log)]) == 0
    assert runlog.is_run_picture(runlog.comparison_path([log]))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_read_only_home_draws_the_picture_without_a_warning(tmp_path):
    # /proc takes no new folder, even from root: matplotlib cannot make its cache there.
    log = tmp_path / "run.pt.jsonl"
    log.write_text(evaluation_line(5) + evaluation_line(10, loss=1.8))
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME",
                                                             "XDG_CACHE_HOME")}  # fmt: skip
    result = subprocess.run([sys.executable, str(REPO / "bigram.py"), "--plot", str(log)],
                            env={**env, "HOME": "/proc"}, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert runlog.is_run_picture(tmp_path / "run.pt.png")


class Optimizer:
    param_groups = [{"lr": 0.5}]


def test_the_progress_bar_reports_the_speed_since_its_last_report(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: next(clock))
    progress = runlog.Progress(0.0, 0, 1000, show=False)
    progress.report(10, 1.5, [Optimizer()])
    assert progress.tokens_per_sec == pytest.approx(10 * 1000 / 2)  # 10 steps in 2 seconds
    progress.report(20, math.nan, [Optimizer()])
    assert progress.tokens_per_sec == pytest.approx(10 * 1000 / 1)
    progress.close()
