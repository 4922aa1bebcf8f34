"""The record of a training run: its log (run.pt.jsonl: one JSON line per evaluation, one for
the final score), written and read; its picture (run.pt.png), drawn with matplotlib when it is
installed; what the console shows of it (the progress bar, each evaluation's lines); and what
it keeps: the best model at each evaluation (save_if_best), the final score at its end.

    python bigram.py --plot checkpoints/a.pt.jsonl checkpoints/b.pt.jsonl   # compare two runs

During training, bigram.py redraws the picture of its run (run.pt.png beside run.pt.jsonl) at
every evaluation. matplotlib is optional: `pip install matplotlib`.
"""

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scratchgpt import checkpoint
from scratchgpt.cli import UserError
from scratchgpt.files import (
    atomic_file,
    check_not_input,
    check_size,
    unreadable_reason,
)
from scratchgpt.scoring import EXHAUSTIVE_MAX_CHARS, LN2, exhaustive_val_loss

PLOTTED = ("iter", "train_loss", "val_loss", "elapsed_s")
MAX_LOGGED = 1e15  # beyond any step, loss or second a run logs; a picture's axis takes it
MAX_LOG_BYTES = 64 << 20  # a line per evaluation, about 200 bytes: over 300,000 evaluations
# Written into every picture's PNG metadata: a file without it is not ours to replace.
PICTURE_MARK = b"ScratchGPT training picture"


def is_evaluation(record) -> bool:
    """A log line with every number a picture needs (not a summary, not a cut or foreign line),
    each within what a run writes: a 401-digit step or a loss of 1e308 is a damaged line."""
    if not isinstance(record, dict):
        return False
    values = [record.get(key) for key in PLOTTED]
    return all(isinstance(v, (int, float)) and abs(v) <= MAX_LOGGED for v in values)


def log_lines(path: Path) -> list[tuple[str, dict]]:
    """Each JSON object of a training log with its line; lines cut short by a kill, or damaged
    (undecodable, not JSON), are skipped."""
    records = []
    check_size(path, "training log", MAX_LOG_BYTES)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append((line, record))
    return records


def log_path(checkpoint: Path | str) -> Path:
    """run.pt's log: run.pt.jsonl."""
    return Path(f"{checkpoint}.jsonl")


def picture_path(checkpoint: Path | str) -> Path:
    """run.pt's picture: run.pt.png."""
    return Path(f"{checkpoint}.png")


def append_log(path: Path, record: dict, new: bool = False) -> None:
    """One line per record; a new log (new=True) is created only if no other program did. A
    line that cannot be written whole (a full disk) is cut off again: the log always ends at its
    last whole record, so the same command or --resume continues from it."""
    try:
        with path.open("xb" if new else "ab", buffering=0) as f:  # nothing buffered to flush
            end, line = f.tell(), memoryview((json.dumps(record) + "\n").encode("utf-8"))
            try:
                while line:  # a write can be partial, as on a disk that fills mid-line
                    line = line[f.write(line) :]
            except OSError:
                os.ftruncate(f.fileno(), end)  # shrinking a file needs no space
                raise
    except FileExistsError:
        raise UserError(
            f"training log {path} was created by another program while this run trained; "
            "the checkpoint is saved: continue with --resume once you moved that file away"
        ) from None
    except OSError as e:
        raise UserError(f"cannot write the training log {path}: {e.strerror}") from None


def log_records(path: Path) -> list[tuple[str, dict]]:
    """The lines of a log that a run wrote (each with its iter), with their records."""
    return [(line, r) for line, r in log_lines(path) if isinstance(r.get("iter"), int)]


def is_training_log(path: Path) -> bool:
    """Empty, or holding at least one line that a run wrote: not someone else's file."""
    return path.stat().st_size == 0 or bool(log_records(path))


def trim_log(path: Path, last_iter: int) -> None:
    """On resume, drop log lines past the checkpoint (those iterations are about to be redone)
    and the summary that ended the interrupted run (the resumed run will write its own)."""
    if path.exists():
        kept = [line + "\n" for line, record in log_records(path)
                if record["iter"] <= last_iter and "val_loss" in record]  # fmt: skip
        try:
            with atomic_file(path) as f:  # a kill or a full disk leaves the old log whole
                f.write("".join(kept).encode("utf-8"))
        except OSError as e:
            raise UserError(
                f"cannot rewrite the training log {path}: {e.strerror}; it is unchanged, and "
                "the same command continues once this is mended"
            ) from None


def set_aside(log: Path) -> Path:
    """Rename log (run.pt.jsonl) to the first free run.pt.earlier-N.jsonl, and return that."""
    n = 1
    while True:
        aside = log.with_name(f"{run_name(log)}.earlier-{n}.jsonl")
        if not aside.exists() and not aside.is_symlink():
            log.rename(aside)
            return aside
        n += 1


def read_log(path: Path) -> list[dict]:
    """The evaluations of a training log."""
    return [record for _, record in log_lines(path) if is_evaluation(record)]


def run_name(log: Path) -> str:
    return log.name.removesuffix(".jsonl")


def shown_name(log: Path) -> str:
    """run_name as a picture can print it: a name in no UTF-8 gets U+FFFD for its odd bytes."""
    return os.fsencode(run_name(log)).decode("utf-8", errors="replace")


def draw_runs(logs: list[Path], out: Path) -> None:
    """Train and validation loss against steps (left) and validation loss against minutes
    (right), one colour per run, each run's best validation loss marked."""
    # Where HOME is read-only, matplotlib caches in a temporary folder, which works, and warns
    # about it at every import: the picture is drawn either way.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from matplotlib.figure import Figure  # no pyplot: no window, no global state

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_step, by_time = figure.subplots(1, 2, sharey=True)
    for i, log in enumerate(logs):
        records = read_log(log)
        if not records:
            continue
        color, name = f"C{i}", shown_name(log)
        steps = [r["iter"] for r in records]
        minutes = [r["elapsed_s"] / 60 for r in records]
        val = [r["val_loss"] for r in records]
        best = min(range(len(val)), key=val.__getitem__)
        by_step.plot(steps, [r["train_loss"] for r in records], "--", color=color, alpha=0.6,
                     label=f"{name} train")  # fmt: skip
        for axes, x in ((by_step, steps), (by_time, minutes)):
            axes.plot(x, val, "-", color=color, label=f"{name} val")
            axes.plot(x[best], val[best], "o", color=color)
            axes.annotate(f"best {val[best]:.4f}", (x[best], val[best]), xytext=(0, 7),
                          textcoords="offset points", ha="center", fontsize=8)  # fmt: skip
    by_step.set(xlabel="step", ylabel="loss (nats per character)", title="loss against steps")
    by_time.set(xlabel="minutes", title="validation loss against time")
    for axes in (by_step, by_time):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    check_replaceable(out)
    # Atomic, as a viewer may have it open; a new file is created only where the name is free.
    with atomic_file(out, replace=out.exists()) as f:
        figure.savefig(f, format="png", dpi=90, metadata={"Software": PICTURE_MARK.decode()})


def is_run_picture(path: Path) -> bool:
    """Whether path is a picture this module drew (its PNG metadata carries PICTURE_MARK)."""
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)  # the text chunks come before the image data
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and PICTURE_MARK in head


def check_replaceable(picture: Path) -> None:
    """A picture may replace only a picture drawn here: any other file there is someone's."""
    if picture.exists() or picture.is_symlink():
        if not picture.is_file() or not is_run_picture(picture):
            raise UserError(
                f"{picture} exists and is not a picture of a training run: move it away, "
                "or choose another name"
            )


class RunPicture:
    """The picture of a run, redrawn at each evaluation. It is never a reason for training to
    fail: without matplotlib, or when drawing fails, it says so once and draws no more."""

    def __init__(self, path: Path, note: Callable[[str], None]):
        self.path, self.note, self.enabled = path, note, True

    def draw(self, logs: list[Path]) -> None:
        if not self.enabled:
            return
        try:
            draw_runs(logs, self.path)
        except ImportError:
            self.note("no picture of the run: matplotlib is not installed (pip install matplotlib)")
            self.enabled = False
        except (UserError, FileExistsError):  # a file no run drew has the name: it is kept
            self.note(f"no picture of the run: {self.path} was not drawn by a run (move it away)")
            self.enabled = False
        except Exception as e:  # a picture is a nicety: training goes on without it
            self.note(f"no picture of the run: drawing failed ({type(e).__name__}: {e})")
            self.enabled = False


def comparison_path(logs: list[Path]) -> Path:
    """run.pt.jsonl -> run.pt.png; several runs -> a.pt-vs-b.pt.png beside the first."""
    names = "-vs-".join(run_name(log) for log in logs[:3]) + ("-vs-more" if len(logs) > 3 else "")
    return logs[0].with_name(names + ".png")


def plot_logs(logs: list[Path]) -> Path:
    """Draw finished runs into one picture; returns its path."""
    for log in logs:
        reason = unreadable_reason(log)
        if reason is not None:
            raise UserError(f"--plot: training log {log} {reason}")
        if not read_log(log):
            raise UserError(f"--plot: {log} holds no evaluation (is it a training log?)")
    out = comparison_path(logs)
    check_not_input(out, "--plot's picture", {f"the log {log}": log for log in logs})
    try:
        draw_runs(logs, out)
    except UserError as e:
        raise UserError(f"--plot: {e}") from None
    except FileExistsError:
        raise UserError(f"--plot: {out} was created by another program meanwhile") from None
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    except OSError as e:
        raise UserError(f"--plot: cannot write {out}: {e.strerror}") from None
    return out


PROGRESS_BAR = "{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"


def evaluation_lines(record: dict) -> str:
    """An evaluation's record as the console shows it: the losses, the exhaustive val loss when
    there is one, then the sample, indented."""
    lines = [f"iter {record['iter']}: train loss {record['train_loss']:.4f}, val loss "
             f"{record['val_loss']:.4f} ({record['val_bpc']:.3f} bits/char)"]  # fmt: skip
    if "exhaustive_val_loss" in record:
        loss = record["exhaustive_val_loss"]
        lines.append(f"    exhaustive val loss {loss:.4f} ({record['exhaustive_val_bpc']:.3f} "
                     "bits/char)")  # fmt: skip
    if "sample" in record:
        lines += [f"    | {line}" for line in record["sample"].split("\n")]
    return "\n".join(lines)


class Progress:
    """A run on the console: a bar of the share of the run done (so its time left is right
    whichever budget, steps or minutes, ends the run), with the step, loss, learning rate and
    speed; what training prints goes above it."""

    def __init__(self, done: float, step: int, tokens_per_step: int, show: bool):
        self.bar = tqdm(total=1.0, initial=done, bar_format=PROGRESS_BAR, disable=not show)
        self.tokens_per_step, self.tokens_per_sec = tokens_per_step, 0.0
        self.since, self.since_step = time.perf_counter(), step

    def write(self, text: str) -> None:
        self.bar.write(text)

    def advance(self, done: float) -> None:
        self.bar.update(done - self.bar.n)

    def report(self, step: int, loss: float, optimizers: list) -> None:
        """Show the loss, the learning rate and the speed since the last report."""
        now = time.perf_counter()
        self.tokens_per_sec = (step - self.since_step) * self.tokens_per_step / (now - self.since)
        self.since, self.since_step = now, step
        lr = optimizers[0].param_groups[0]["lr"]
        self.bar.set_postfix(iter=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                             tok_s=f"{self.tokens_per_sec:,.0f}")  # fmt: skip

    def close(self) -> None:
        self.bar.close()


# -----------------------------------------------------------------------------
# What a run keeps: the best model at each evaluation, and the final score


def save_if_best(run: Any, record: dict) -> None:
    """Save the model of run (a bigram.Run) if it is the best so far, then log the evaluation.
    The checkpoint comes first: a kill between the two leaves a checkpoint that --resume
    continues (trimming the log to it), never a log line that no checkpoint continues."""
    log = log_path(run.config.out)
    if record["val_loss"] < run.best_val_loss:  # never true for NaN: a diverged model is not saved
        run.best_val_loss, run.best_step = record["val_loss"], run.step
        state = checkpoint.training_state(
            run.config.model_type, run.model, run.optimizers, run.data.vocab, asdict(run.config),
            run.step, run.best_val_loss, record["elapsed_s"], run.data.identity,
        )  # fmt: skip
        checkpoint.save_checkpoint(state, run.config.out, replace=run.saved)
        append_log(log, record, new=not run.saved)
        run.saved = True
    elif run.saved:
        append_log(log, record)
    if run.saved:
        run.picture.draw([log])


class TrainingStopped(Exception):
    """Training ended without a model to show for it: raised with the run, which diverged
    (run.bad_loss), and why it stopped, if before its first evaluation."""


def final_score(run: Any, why: str) -> str:
    """The best model's loss on every validation character, logged (the figure to compare runs
    by), and the summary line."""
    if run.bad_loss is not None or not math.isfinite(run.best_val_loss):
        raise TrainingStopped(run, why)
    config, val = run.config, run.splits["val"]
    if run.best_step != run.step:  # the weights in memory moved on since the best evaluation
        run.model.load_state_dict(checkpoint.load_checkpoint(config.out, run.device)["model"])
    loss = exhaustive_val_loss(run.model, val, config.block_size, run.device, run.dtype)
    scored = min(len(val) - 1, EXHAUSTIVE_MAX_CHARS)
    record = {"iter": run.best_step, "exhaustive_val_loss": loss, "exhaustive_val_bpc": loss / LN2}
    append_log(log_path(config.out), record | {"val_chars_scored": scored})
    print(f"exhaustive val loss {loss:.4f} ({loss / LN2:.3f} bits/char): the best model "
          f"on every one of {scored:,} val characters")  # fmt: skip
    return f"best val loss {run.best_val_loss:.4f} at iter {run.best_step} -> {config.out}"
