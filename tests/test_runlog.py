"""The record of a run: its log's lines and names, --plot, and the progress bar."""

import math

import pytest
from support import main_error

import bigram
from scratchgpt import runlog


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


def test_plot_refuses_what_is_not_a_training_log_in_one_line(tmp_path, capsys):
    (tmp_path / "binary.pt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "odd.jsonl").write_text('{"val_loss": 1.0}\n{"iter": 2, "val_loss": "x"}\n')
    for log in ("binary.pt", "odd.jsonl", "missing.jsonl"):
        line = main_error(bigram.main, ["--plot", str(tmp_path / log)], capsys)
        assert "--plot" in line


class Optimizer:
    param_groups = [{"lr": 0.5}]


def test_the_progress_bar_reports_speed_and_tells_a_diverged_loss(tmp_path, monkeypatch):
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: next(clock))
    progress = runlog.Progress(str(tmp_path / "run.pt"), 0.0, 0, 1000, show=False)
    assert progress.report(10, 1.5, [Optimizer()]) is None
    assert progress.tokens_per_sec == pytest.approx(10 * 1000 / 2)  # 10 steps in 2 seconds
    assert math.isnan(progress.report(20, math.nan, [Optimizer()]))
    assert progress.tokens_per_sec == pytest.approx(10 * 1000 / 1)
    progress.close()
