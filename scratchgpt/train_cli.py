"""bigram.py's command line: flags to a checked TrainConfig, the corpus, the checkpoint a run
continues (--resume) or starts from (--init-from), and the files it writes, all checked before
training starts; the preset this machine trains best in its time budget; Ctrl-C turned into a
request to stop.

bigram.main() hands this module what it needs of the model file (a Trainer): the config class
(TrainConfig, which carries the presets, the architectures and the model types a checkpoint may
hold), how a run starts and trains, and a training step to time. This module never imports
bigram.py: the plumbing depends on the model, not the other way round, and `python bigram.py`
loads the file once."""

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from scratchgpt import checkpoint, corpus, distributed, files, machine, reddit, runlog
from scratchgpt.cli import UserError, add_flags, check_seed, flag, flag_fields, typed_flag

# What the config class (bigram.TrainConfig) is: the settings of a run, each a --flag, with its
# named presets and architectures, the settings of the model marked `shape`.
Config = Any
MAX_SAMPLE_CHARS = 100_000  # a sample at each evaluation: longer would cost more than training
# What the shape table's runs fix (machine.py), with the architecture's switches: a run given any
# of them trains its own shape.
TABLE_SHAPE = (
    "model_type",
    "n_layer",
    "n_head",
    "n_embd",
    "block_size",
    "batch_size",
    "grad_accum",
)
# What a training step's speed depends on besides the model's settings: a cached step time is
# kept under a hash of them.
STEP_SETTINGS = ("batch_size", "grad_accum", "optimizer", "dtype", "dropout", "compile")


def model_shape(config_class: type) -> tuple[str, ...]:
    """The settings a trained model fixes: --resume and --init-from refuse to change them."""
    return ("model_type", *(f.name for f in fields(config_class) if f.metadata.get("shape")))


def kept_on_resume(config_class: type) -> dict[str, str]:
    """What --resume continues as it was saved, and why: another value would be another run."""
    return {
        **dict.fromkeys((*model_shape(config_class), "optimizer"),
                        "the saved model's shape and optimizer"),
        **dict.fromkeys(("dataset", "clean", "max_vocab"), "the corpus as the saved run read it"),
    }  # fmt: skip


def parse_args(argv: list[str] | None, config_class: type) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a character-level GPT (or the bigram baseline).")
    # Given flags override the preset (or, with --resume, the checkpoint's settings). --model is
    # --model-type's earlier name, still taken.
    arch_help = "the switches below at once; default: the preset's (cpu: modern)"
    p.add_argument("--arch", choices=config_class.architectures, help=arch_help)
    add_flags(p, config_class)
    model_type = next(f for f in fields(config_class) if f.name == "model_type")
    p.add_argument("--model", dest="model_type", choices=model_type.metadata["choices"],
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the run saved at --out")
    p.add_argument("--plot", nargs="+", type=Path, metavar="RUN.jsonl",
                   help="draw these training logs into one picture, then exit")  # fmt: skip
    return p.parse_args(argv)


def default_preset(device: torch.device) -> str:
    """gpu on CUDA; on a CPU, the preset of its class: with bf16 instructions or without."""
    if device.type == "cuda":
        return "gpu"
    return "cpu" if machine.native_bf16(device) else "cpu-float32"


def make_config(
    args: argparse.Namespace, device: torch.device, saved: dict | None, config_class: type
) -> Config:
    """Preset (or the resumed run's saved settings), then the flags given on the command line
    (args may hold some of config_class's flags only: bench.py's)."""
    given = {f.name: getattr(args, f.name, None) for f in flag_fields(config_class)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    arch = config_class.architectures[args.arch] if args.arch else {}  # switches one by one win
    if saved is not None:
        if "preset" in given:
            raise UserError("--resume continues the saved settings; drop --preset")
        for name, kept in kept_on_resume(config_class).items():
            value = given.get(name, arch.get(name))
            if value is not None and value != saved.get(name):
                which = typed_flag(name, value) if name in given else "--arch"
                raise UserError(f"--resume keeps {kept}; drop {which}")
        return new_config({**saved, **arch, **given}, config_class)  # --arch's schedule applies
    preset = given.get("preset") or default_preset(device)
    settings = {**config_class.presets[preset], **arch, **given, "preset": preset}
    config = new_config(settings, config_class)
    config.data = str(corpus_path(config.dataset, config.data))
    return config


def new_config(settings: dict, config_class: type) -> Config:
    try:
        return config_class(**settings)
    except ValueError as e:  # GPTConfig's checks: the model's shape, every setting's choices
        raise UserError(str(e)) from None


def switches(config: Config) -> dict:
    """The architecture's switches the config is set to (those the classic recipe names)."""
    return {name: getattr(config, name) for name in type(config).architectures["classic"]}


def arch_name(config: Config) -> str:
    """The architecture whose switches the config has, or "custom"."""
    known = type(config).architectures.items()
    return next((name for name, arch in known if arch == switches(config)), "custom")


def recipe(config: Config) -> str:
    """The architecture's name and its switches: what the run is made of."""
    details = ", ".join(f"{name}={value}" for name, value in switches(config).items())
    return f"{arch_name(config)} ({details})"


def validate(config: Config) -> None:
    positive = ["batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters"]
    for name in positive:
        if getattr(config, name) < 1:
            raise UserError(f"{flag(name)} must be at least 1")
    numbers = [
        "lr",
        "min_lr",
        "muon_lr",
        "decay_share",
        "warmup_iters",
        "weight_decay",
        "grad_clip",
        "distill_weight",
        "distill_temperature",
    ]
    for name in [*numbers, "max_minutes"]:
        value = getattr(config, name)
        if not math.isfinite(value):  # NaN passes every comparison below: refuse it first
            raise UserError(f"{flag(name)} must be a finite number, got {value}")
        if value < 0:
            raise UserError(f"{flag(name)} must not be negative")
    if config.lr <= 0 or config.min_lr > config.lr:
        raise UserError("learning rates must satisfy 0 <= --min-lr <= --lr and --lr > 0")
    if config.muon_lr <= 0:
        raise UserError("--muon-lr must be above 0")
    if not 0 < config.decay_share <= 1:
        raise UserError("--decay-share must be in (0, 1]")
    if config.distill_weight > 1 or config.distill_temperature == 0:
        raise UserError("--distill-weight must be in [0, 1] and --distill-temperature above 0")
    check_seed(config.seed)
    if not 0 <= config.sample_chars <= MAX_SAMPLE_CHARS:
        raise UserError(f"--sample-chars must be between 0 and {MAX_SAMPLE_CHARS:,}")


def is_reddit(config: Config) -> bool:
    return config.dataset == "reddit" or reddit.is_rar(Path(config.data))


def load_corpus(config: Config) -> corpus.Corpus:
    path = Path(config.data)
    if is_reddit(config):
        return reddit.load_reddit(
            path, corpus.CACHE_DIR, clean=config.clean, max_vocab=config.max_vocab
        )
    if files.unreadable_reason(path) == "not found" and path == corpus.DATASET_FILES["shakespeare"]:
        corpus.download_shakespeare(path)
    return corpus.load_text_corpus(path, clean=config.clean)


# -----------------------------------------------------------------------------
# The files of a run


def corpus_path(dataset: str, data: str | None) -> Path:
    """--data, or the dataset's file in data/, as an absolute path: the checkpoint records it,
    and --resume from another folder must find the same file."""
    return files.user_path(data, "--data").absolute() if data else corpus.DATASET_FILES[dataset]


def checkpoint_path(args: argparse.Namespace) -> Path:
    """--out, or checkpoints/<dataset>.pt; a fine-tuned model is named after its corpus and its
    starting point (checkpoints/mytext-from-shakespeare.pt), never after the model it came from."""
    if args.out:
        return files.user_path(args.out, "--out", output_example="run.pt")
    dataset = args.dataset or corpus.DEFAULT_DATASET
    if args.init_from:
        data = corpus_path(dataset, args.data)
        return checkpoint.CHECKPOINT_DIR / f"{data.stem}-from-{Path(args.init_from).stem}.pt"
    return checkpoint.default_path(dataset)


def run_outputs(out: Path) -> dict[str, Path]:
    """Every file a training run creates or replaces, each named after its checkpoint (run.pt):
    the checkpoint, its log (run.pt.jsonl, a line per evaluation), its picture (run.pt.png) and
    its lock (run.pt.lock). Each is written through a temporary file beside it
    (run.pt.XXXXXXXX.tmp). A Reddit archive's token cache goes to data/cache, under names that
    carry a hash of the archive."""
    return {
        "checkpoint": out,
        "training log": runlog.log_path(out),
        "picture": runlog.picture_path(out),
        "lock": files.lock_path(out),
    }


def run_inputs(config: Config) -> dict[str, Path]:
    """The files a run reads, by what they are to it."""
    inputs = {"the corpus (--data)": Path(config.data)}
    if config.init_from:
        inputs["the checkpoint it starts from (--init-from)"] = Path(config.init_from)
    for path in config.teacher:
        inputs[f"the teacher {path} (--teacher)"] = Path(path)
    return inputs


def check_paths(config: Config, resume: bool) -> None:
    """No output of the run (run_outputs) is one of its inputs, and none replaces a file the run
    did not make: a new run finds none of them but a picture drawn by a run; --resume finds its
    own checkpoint, and a log that is a training log."""
    outputs, inputs = run_outputs(Path(config.out)), run_inputs(config)
    for what, path in outputs.items():
        files.check_not_input(path, what, inputs)
    for what in ("training log", "picture"):  # train() checked the checkpoint
        files.check_writable(outputs[what], what, named_by_user=False)
    out, log = outputs["checkpoint"], outputs["training log"]
    if resume:
        # A picture without the mark may be this run's own, drawn without one: it is kept and
        # not redrawn (RunPicture), rather than a reason to refuse the resume.
        if log.exists() and not runlog.is_training_log(log):
            raise UserError(f"{log} is not a training log: move it away to resume {out}")
        return
    runlog.check_replaceable(outputs["picture"])
    if out.exists() or out.is_symlink():  # a new run must never replace a trained model
        raise UserError(
            f"{out} exists: continue it with --resume --out {out}, or train into another --out"
        )
    if log.is_symlink() or (log.exists() and not runlog.is_training_log(log)):
        raise UserError(
            f"{log} exists and is not a training log: move it away, or use another --out"
        )
    if log.exists():  # its checkpoint was deleted: the user starts again, the record is kept
        aside = runlog.set_aside(log)
        print(f"{log}: the log of a run whose checkpoint is gone, kept as {aside}", file=sys.stderr)


def warn_ignored_flags(args: argparse.Namespace, config: Config) -> None:
    ignored = []
    if not is_reddit(config) and args.max_vocab is not None:
        ignored.append("--max-vocab applies to Reddit archives only")
    if args.backend and "RANK" not in os.environ:
        ignored.append("--backend applies to distributed runs (torchrun) only")
    for note in ignored:
        print(f"warning: {note}; ignored", file=sys.stderr)


# -----------------------------------------------------------------------------
# The checkpoint a run continues or starts from


def load_resumable(out: Path, config_class: type) -> dict:
    """The checkpoint --resume continues, with its training state (against config_class) and its
    model (one of config_class.model_types) checked before use."""

    def missing(path: Path) -> str:
        return (f"--resume: there is no checkpoint at {path} to continue; without --resume a new "
                "run starts there")  # fmt: skip

    saved = checkpoint.load_checkpoint(out, missing=missing)
    checkpoint.check_resumable(saved, out, config_class)
    checkpoint.model_config(saved, out, config_class.model_types)
    return saved


def load_starting_point(args: argparse.Namespace, config_class: type) -> dict:
    """The trained checkpoint --init-from fine-tunes, its model checked: its shape wins over the
    preset's."""
    if args.resume:
        raise UserError("--init-from starts a new run; --resume continues one: choose one")
    shape = (*model_shape(config_class), "arch")
    given = [name for name in shape if getattr(args, name) is not None]
    if given:
        raise UserError(f"--init-from: the shape comes from the checkpoint; drop {flag(given[0])}")
    source = checkpoint.load_checkpoint(args.init_from)
    checkpoint.model_config(source, args.init_from, config_class.model_types)
    return source


def check_same_corpus(given: Path, saved: Path, out: Path) -> None:
    """--resume continues a run on its own corpus: another one is a mistake (say, --out forgotten
    and the default checkpoint resumed), unless the saved one has gone (moved)."""
    if saved.exists() and not files.same_file(given, saved):
        raise UserError(
            f"--resume continues {out}, which trained on {saved}, not {given}: "
            "give that run's --out, or drop --data"
        )


def check_corpus_unchanged(saved: dict | None, now: dict, config: Config) -> None:
    """The corpus a run continues on is the one it trained on: another one moves the validation
    split (the last 10%) over text that was trained on, so its losses would not compare."""
    if saved is None or saved == now:  # a checkpoint without a record: nothing to compare
        return
    if saved.get("chars") != now["chars"]:
        change = f"{saved.get('chars'):,} characters then, {now['chars']:,} now"
    else:
        change = "the same length, other text"
    raise UserError(
        f"--resume: {config.data} has changed since {config.out} trained on it ({change}), so its "
        f"validation losses would not compare; to train on it anyway, start a new run from the "
        f"model: python bigram.py --init-from {config.out} --data {config.data} --out NEW.pt"
    )


# -----------------------------------------------------------------------------
# A run, from flags to summary


def prepare_settings(
    args: argparse.Namespace, device: torch.device, ddp: distributed.Distributed,
    config_class: type,
) -> tuple[Config, dict | None, dict | None]:  # fmt: skip
    """The run's settings (a config_class), with the checkpoint it continues (--resume) or starts
    from (--init-from), all checked, and its files checked too (rank 0)."""
    out = checkpoint_path(args)
    resumed = load_resumable(out, config_class) if args.resume else None
    source = load_starting_point(args, config_class) if args.init_from else None
    if resumed is not None and args.data:
        check_same_corpus(Path(args.data), Path(resumed["config"].get("data", args.data)), out)
    config = make_config(args, device, resumed["config"] if resumed else None, config_class)
    if source is not None:
        config = replace(config, **checkpoint.model_shape(source, model_shape(config_class)))
    config.out = str(out)  # where the checkpoint is now, even if it was moved since
    validate(config)
    if ddp.is_main:
        check_paths(config, args.resume)
        warn_ignored_flags(args, config)
        inputs = list(run_inputs(config).values())
        for path in run_outputs(out).values():  # a killed save's leftovers (we hold the lock)
            files.remove_stale_temps(path, keep=inputs)
    return config, resumed, source


def prepare_corpus(
    config: Config, trained: dict | None, resumed: bool, say: Callable[[str], None]
) -> corpus.Corpus:
    """The corpus, in the trained model's vocabulary when there is one, checked: unchanged since
    the run it resumes, and long enough for a validation window."""
    data = load_corpus(config)
    if trained is not None:  # the model's characters keep their ids
        data, added = corpus.adopt_vocab(data, trained["vocab"])
        if added and resumed:
            raise UserError(
                f"--resume: {config.data} has characters that {config.out} never saw "
                f"({', '.join(map(repr, added[:10]))}): a different vocabulary"
            )
        if added:
            say(f"vocabulary: {len(trained['vocab'])} characters from {config.init_from}, "
                f"{len(added)} added: {''.join(added[:40])!r}")  # fmt: skip
    if resumed:
        check_corpus_unchanged(trained["corpus"], data.identity, config)
    if len(data.tokens) < 10 * (config.block_size + 1):
        raise UserError(
            f"corpus {config.data} has {len(data.tokens)} characters; it needs at least "
            f"{10 * (config.block_size + 1)} (10 x (block_size + 1)) so that the 10% validation "
            "split holds one window"
        )
    return data


def describe(run: Any, machine_line: str | None, preset_picked: bool) -> str:
    """What a run (bigram.Run) trains: preset (or the machine's choice, with its figures),
    architecture, size, data, hardware, tokens per step."""
    c, ddp = run.config, run.ddp
    train_tokens, val_tokens = (len(run.splits[s]) for s in ("train", "val"))
    lines = [
        f"architecture: {recipe(c)}",
        f"{c.model_type}: {run.model.num_parameters() / 1e6:.2f}M parameters, vocab "
        f"{len(run.data.vocab)}, {train_tokens:,} train / {val_tokens:,} val tokens, on "
        f"{ddp.world_size} x {run.device.type} in {str(run.dtype).removeprefix('torch.')}",
        f"tokens per optimizer step: {run.tokens_per_step:,} = batch {c.batch_size} x block "
        f"{c.block_size} x grad-accum {c.grad_accum} x processes {ddp.world_size}",
    ]
    if c.teacher:
        lines.append(f"distilling from {', '.join(c.teacher)}: the teacher's share of the loss "
                     f"{c.distill_weight:g}, temperature {c.distill_temperature:g}")  # fmt: skip
    if machine_line:
        lines.insert(0, machine_line)
    elif preset_picked:
        budget = f", {c.max_minutes:g} minutes" if c.max_minutes else ""
        lines.insert(0, f"preset: {c.preset}{budget} (picked for this {run.device.type}; "
                        "--preset overrides)")  # fmt: skip
    return "\n".join(lines)


def machine_candidates(
    args: argparse.Namespace, config: Config, device: torch.device,
    ddp: distributed.Distributed,
) -> list[Config]:  # fmt: skip
    """The runs a new CPU run chooses among by timing (machine.choose_training): each CPU preset
    of the shape table and each precision this CPU runs natively, less what the flags fix. Empty
    when nothing is left to choose: on a GPU, under torchrun, for --resume or --init-from, or
    without a time budget of a few minutes at least."""
    fixed = device.type != "cpu" or ddp.world_size > 1 or args.resume or args.init_from
    fixed = fixed or config.teacher  # neither the shape table nor cached step times know a teacher
    if fixed or args.preset or config.max_minutes * 60 < machine.MIN_BUDGET_S:
        return []
    own_shape = any(getattr(args, name) is not None for name in (*TABLE_SHAPE, "arch"))
    own_shape = own_shape or any(getattr(args, name) is not None for name in switches(config))
    presets = [config.preset] if own_shape else list(machine.read_shape_table())
    dtypes = [config.dtype]
    if args.dtype is None:
        dtypes = ["bfloat16", "float32"] if machine.native_bf16(device) else ["float32"]
    given = {name for name in vars(args) if getattr(args, name) is not None}
    named = type(config).presets
    candidates = [
        replace(config, preset=p, dtype=d, **{k: v for k, v in named[p].items() if k not in given})
        for p in presets
        for d in dtypes
    ]
    return candidates if len(candidates) > 1 else []


def step_name(config: Config) -> str:
    """What a cached step time is kept under: the settings its speed depends on."""
    names = (*model_shape(type(config)), "vocab_size", *STEP_SETTINGS)
    settings = {name: getattr(config, name) for name in names}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"train step {digest} ({config.preset}, {config.dtype})"


def choose_for_machine(
    candidates: list[Config], data: corpus.Corpus, device: torch.device,
    step_timer: Callable[[Config, corpus.Corpus, torch.device], Callable[[], object]],
) -> tuple[Config, machine.TrainingChoice]:  # fmt: skip
    """The candidate predicted to end lowest in the time budget, from the times of its training
    steps (step_timer gives one, bigram.py's own) measured here, or kept from an earlier run on
    this machine."""
    by_key = {(c.preset, c.dtype): c for c in candidates}
    steps = {key: step_timer(c, data, device) for key, c in by_key.items()}
    choice = machine.choose_training(
        steps,
        steps_cap={c.preset: c.max_iters for c in candidates},
        budget_s=candidates[0].max_minutes * 60,
        names={key: step_name(c) for key, c in by_key.items()},
        evaluation_share={
            c.preset: machine.evaluation_cost(c.eval_iters, c.eval_interval) for c in candidates
        },
    )
    return by_key[choice.preset, choice.dtype], choice


def stopped_early(run: Any, why: str) -> str:
    """Why a run (bigram.Run) ended with no model to show for it, and what it kept."""
    kept = "nothing was saved"
    if math.isfinite(run.best_val_loss):
        kept = f"{run.config.out} keeps the best model (iter {run.best_step}, val loss "
        kept += f"{run.best_val_loss:.4f})"
    if run.bad_loss is not None:
        return (f"training diverged: the loss became {run.bad_loss} by iter {run.step}; {kept}; "
                "try a lower --lr")  # fmt: skip
    return f"the run stopped at iter {run.step} before any evaluation ({why}): {kept}"


@contextmanager
def checkpoint_lock(args: argparse.Namespace, ddp: distributed.Distributed) -> Iterator[None]:
    """One run per checkpoint at a time: rank 0 holds a lock beside it while the run trains."""
    if not ddp.is_main:
        yield
        return
    out = checkpoint_path(args)
    files.check_writable(out, "checkpoint")  # and its folder exists, for the lock file
    with files.exclusive_lock(out, "checkpoint"):
        yield


@dataclass(frozen=True)
class Trainer:
    """What bigram.py hands the command line of itself: its config class (TrainConfig), how a run
    starts (start_run) and trains (train), and one training step to time (step_timer)."""

    config_class: type
    start_run: Callable[..., Any]
    train: Callable[[Any, threading.Event], str | None]
    step_timer: Callable[[Config, corpus.Corpus, torch.device], Callable[[], object]]


def launch(args: argparse.Namespace, trainer: Trainer) -> str | None:
    """The device, the processes and the checkpoint's lock, then the run (run_from_flags);
    returns the summary line (None on ranks other than 0)."""
    device = machine.resolve_device(args.device or "auto")
    machine.reuse_freed_memory()
    ddp, device = distributed.setup_distributed(device, args.backend or "")
    with checkpoint_lock(args, ddp):
        return run_from_flags(args, ddp, device, trainer)


def run_from_flags(
    args: argparse.Namespace, ddp: distributed.Distributed, device: torch.device,
    trainer: Trainer,
) -> str | None:  # fmt: skip
    """The run the flags ask for, its settings, checkpoints, corpus and files checked first,
    on the shape and precision this machine trains best (choose_for_machine) when the flags leave
    them open; then trained. Returns the summary line (rank 0)."""
    say = print if ddp.is_main else lambda *a, **k: None
    with distributed.rank_zero_first(ddp):
        config, resumed, source = prepare_settings(args, device, ddp, trainer.config_class)
        data = prepare_corpus(config, resumed or source, resumed is not None, say)
    candidates, choice = machine_candidates(args, config, device, ddp), None
    if candidates:
        config, choice = choose_for_machine(candidates, data, device, trainer.step_timer)
    run = trainer.start_run(config, data, device, ddp, resume=resumed, init_from=source)
    if ddp.is_main and resumed is not None:
        runlog.trim_log(runlog.log_path(config.out), run.step)
    if choice is not None:
        run.elapsed_before = choice.measured_for  # the budget includes the measurement
    preset_picked = not args.resume and not args.preset
    say(describe(run, choice.line() if choice else None, preset_picked))
    with stop_requests() as stop:
        try:
            return trainer.train(run, stop)
        except runlog.TrainingStopped as e:
            raise UserError(stopped_early(*e.args)) from None


@contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C (or SIGTERM) into a request to stop after the current step.

    Training then ends the way it does at max_iters: evaluate, save. A second Ctrl-C raises
    KeyboardInterrupt at once; the checkpoint on disk is still the last complete one.
    """
    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(
    argv: list[str] | None, config_class: type, start_run: Callable, train: Callable,
    step_timer: Callable,
) -> int:  # fmt: skip
    """python bigram.py: the flags (config_class's), then the run they ask for, started by
    start_run and trained by train; errors a user can mend are one line on stderr and exit 1."""
    args = parse_args(argv, config_class)
    trainer = Trainer(config_class, start_run, train, step_timer)
    try:
        if args.plot:
            print(f"wrote {runlog.plot_logs(args.plot)}")
            return 0
        summary = launch(args, trainer)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before training, or a second Ctrl-C during it
        print("interrupted: no file was left half-written", file=sys.stderr)
        return 130
    if summary is not None:
        print(summary)
    return 0
