"""bigram.py's command line: flags to a checked TrainConfig, the corpus, the checkpoint a run
continues (--resume) or starts from (--init-from), and the files it writes, all checked before
training starts; then bigram.train(), with Ctrl-C turned into a request to stop."""

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
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

import bigram
from bigram import ARCHITECTURES, PRESETS, TrainConfig
from scratchgpt import checkpoint, corpus, files, hardware, machine, reddit, runlog
from scratchgpt.cli import add_flags, check_seed, flag, flag_fields, typed_flag
from scratchgpt.files import UserError

# The settings a trained model fixes: --resume and --init-from refuse to change them.
MODEL_SHAPE = ("model", *(f.name for f in fields(bigram.GPTConfig) if f.metadata.get("shape")))
# What --resume continues as it was saved: another value would be another run.
KEPT_ON_RESUME = {
    **dict.fromkeys((*MODEL_SHAPE, "optimizer"), "the saved model's shape and optimizer"),
    **dict.fromkeys(("dataset", "clean", "max_vocab"), "the corpus as the saved run read it"),
}
MAX_SAMPLE_CHARS = 100_000  # a sample at each evaluation: longer would cost more than training
# What the shape table's runs fix (machine.py): a run given any of them trains its own shape.
TABLE_RECIPE = ("model", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum",
                "arch", *ARCHITECTURES["classic"])  # fmt: skip
# What a training step's speed depends on: a cached step time is kept under a hash of these.
STEP_SETTINGS = ("batch_size", "grad_accum", "optimizer", "dtype", "dropout", "compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a character-level GPT (or the bigram baseline).")
    # Given flags override the preset (or, with --resume, the checkpoint's settings).
    arch_help = "the switches below at once; default: the preset's (cpu: modern)"
    p.add_argument("--arch", choices=ARCHITECTURES, help=arch_help)
    add_flags(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue the run saved at --out")
    p.add_argument("--plot", nargs="+", type=Path, metavar="RUN.jsonl",
                   help="draw these training logs into one picture, then exit")  # fmt: skip
    return p.parse_args(argv)


def default_preset(device: torch.device) -> str:
    """gpu on CUDA; on a CPU, the preset of its class: with bf16 instructions or without."""
    if device.type == "cuda":
        return "gpu"
    return "cpu" if hardware.native_bf16(device) else "cpu-float32"


def make_config(args: argparse.Namespace, device: torch.device, saved: dict | None) -> TrainConfig:
    """Preset (or the resumed run's saved settings), then the flags given on the command line."""
    given = {f.name: getattr(args, f.name) for f in flag_fields(TrainConfig)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    arch = ARCHITECTURES[args.arch] if args.arch else {}  # switches given one by one win
    if saved is not None:
        if "preset" in given:
            raise UserError("--resume continues the saved settings; drop --preset")
        for name, kept in KEPT_ON_RESUME.items():
            value = given.get(name, arch.get(name))
            if value is not None and value != saved.get(name):
                which = typed_flag(name, value) if name in given else "--arch"
                raise UserError(f"--resume keeps {kept}; drop {which}")
        return new_config({**saved, **arch, **given})  # --arch's schedule applies
    preset = given.get("preset") or default_preset(device)
    config = new_config({**PRESETS[preset], **arch, **given, "preset": preset})
    config.data = str(corpus_path(config.dataset, config.data))
    return config


def new_config(settings: dict) -> TrainConfig:
    try:
        return TrainConfig(**settings)
    except ValueError as e:  # GPTConfig's checks of the model's shape
        raise UserError(str(e)) from None


def arch_name(config: TrainConfig) -> str:
    """The architecture whose switches the config has, or "custom"."""
    switches = {name: getattr(config, name) for name in ARCHITECTURES["classic"]}
    return next((name for name, arch in ARCHITECTURES.items() if arch == switches), "custom")


def recipe(config: TrainConfig) -> str:
    """The architecture's name and its switches: what the run is made of."""
    details = ", ".join(f"{name}={getattr(config, name)}" for name in ARCHITECTURES["classic"])
    return f"{arch_name(config)} ({details})"


def validate(config: TrainConfig) -> None:
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
    for f in fields(TrainConfig):  # a damaged checkpoint's settings can hold anything
        choices = f.metadata.get("choices")
        if choices and f.name != "backend" and getattr(config, f.name) not in choices:
            raise UserError(f"{flag(f.name)} must be one of {', '.join(choices)}")
    check_seed(config.seed)
    if not 0 <= config.sample_chars <= MAX_SAMPLE_CHARS:
        raise UserError(f"--sample-chars must be between 0 and {MAX_SAMPLE_CHARS:,}")


def is_reddit(config: TrainConfig) -> bool:
    return config.dataset == "reddit" or reddit.is_rar(Path(config.data))


def load_corpus(config: TrainConfig) -> corpus.Corpus:
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
    dataset = args.dataset or TrainConfig.dataset
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


def run_inputs(config: TrainConfig) -> dict[str, Path]:
    """The files a run reads, by what they are to it."""
    inputs = {"the corpus (--data)": Path(config.data)}
    if config.init_from:
        inputs["the checkpoint it starts from (--init-from)"] = Path(config.init_from)
    for path in config.teacher:
        inputs[f"the teacher {path} (--teacher)"] = Path(path)
    return inputs


def check_paths(config: TrainConfig, resume: bool) -> None:
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


def warn_ignored_flags(args: argparse.Namespace, config: TrainConfig) -> None:
    ignored = []
    if not is_reddit(config) and args.max_vocab is not None:
        ignored.append("--max-vocab applies to Reddit archives only")
    if args.backend and "RANK" not in os.environ:
        ignored.append("--backend applies to distributed runs (torchrun) only")
    for note in ignored:
        print(f"warning: {note}; ignored", file=sys.stderr)


# -----------------------------------------------------------------------------
# The checkpoint a run continues or starts from


def load_resumable(out: Path) -> dict:
    """The checkpoint --resume continues, with its training state checked before it is used."""
    if files.unreadable_reason(out) == "not found":
        raise UserError(
            f"--resume: there is no checkpoint at {out} to continue; without --resume a new "
            "run starts there"
        )
    saved = checkpoint.load_checkpoint(out)
    checkpoint.check_resumable(saved, out, TrainConfig)
    checkpoint.model_config(saved, out, bigram.GPTConfig, bigram.MODEL_TYPES)
    return saved


def load_starting_point(args: argparse.Namespace) -> dict:
    """The trained checkpoint --init-from fine-tunes: its shape wins over the preset's."""
    if args.resume:
        raise UserError("--init-from starts a new run; --resume continues one: choose one")
    given = [name for name in (*MODEL_SHAPE, "arch") if getattr(args, name) is not None]
    if given:
        raise UserError(f"--init-from: the shape comes from the checkpoint; drop {flag(given[0])}")
    source = checkpoint.load_checkpoint(args.init_from)
    checkpoint.model_config(source, args.init_from, bigram.GPTConfig, bigram.MODEL_TYPES)
    return source


def check_same_corpus(given: Path, saved: Path, out: Path) -> None:
    """--resume continues a run on its own corpus: another one is a mistake (say, --out forgotten
    and the default checkpoint resumed), unless the saved one has gone (moved)."""
    if saved.exists() and not files.same_file(given, saved):
        raise UserError(
            f"--resume continues {out}, which trained on {saved}, not {given}: "
            "give that run's --out, or drop --data"
        )


def check_corpus_unchanged(saved: dict | None, now: dict, config: TrainConfig) -> None:
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
    args: argparse.Namespace, device: torch.device, ddp: hardware.Distributed
) -> tuple[TrainConfig, dict | None, dict | None]:
    """The run's settings, with the checkpoint it continues (--resume) or starts from
    (--init-from), all checked, and its files checked too (rank 0)."""
    out = checkpoint_path(args)
    resumed = load_resumable(out) if args.resume else None
    source = load_starting_point(args) if args.init_from else None
    if resumed is not None and args.data:
        check_same_corpus(Path(args.data), Path(resumed["config"].get("data", args.data)), out)
    config = make_config(args, device, resumed["config"] if resumed else None)
    if source is not None:
        config = replace(config, **checkpoint.model_shape(source, MODEL_SHAPE))
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
    config: TrainConfig, trained: dict | None, resumed: bool, say: Callable[[str], None]
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


def describe(run: bigram.Run, machine_line: str | None, preset_picked: bool) -> str:
    """What the run trains: preset (or the machine's choice, with its figures), architecture,
    size, data, hardware, tokens per step."""
    c, ddp = run.config, run.ddp
    train_tokens, val_tokens = (len(run.splits[s]) for s in ("train", "val"))
    lines = [
        f"architecture: {recipe(c)}",
        f"{c.model}: {bigram.count_parameters(run.model) / 1e6:.2f}M parameters, vocab "
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
    args: argparse.Namespace, config: TrainConfig, device: torch.device, ddp: hardware.Distributed
) -> list[TrainConfig]:  # fmt: skip
    """The runs a new CPU run chooses among by timing (machine.choose_training): each CPU preset
    of the shape table and each precision this CPU runs natively, less what the flags fix. Empty
    when nothing is left to choose: on a GPU, under torchrun, for --resume or --init-from, or
    without a time budget of a few minutes at least."""
    fixed = device.type != "cpu" or ddp.world_size > 1 or args.resume or args.init_from
    fixed = fixed or config.teacher  # the candidates' steps are timed without a teacher
    if fixed or args.preset or config.max_minutes * 60 < machine.MIN_BUDGET_S:
        return []
    own_shape = any(getattr(args, name) is not None for name in TABLE_RECIPE)
    presets = [config.preset] if own_shape else list(machine.read_shape_table())
    dtypes = [config.dtype]
    if args.dtype is None:
        dtypes = ["bfloat16", "float32"] if hardware.native_bf16(device) else ["float32"]
    given = {name for name in vars(args) if getattr(args, name) is not None}
    candidates = [
        replace(
            config, preset=p, dtype=d, **{k: v for k, v in PRESETS[p].items() if k not in given}
        )
        for p in presets
        for d in dtypes
    ]
    return candidates if len(candidates) > 1 else []


def step_timer(config: TrainConfig, data: corpus.Corpus, device: torch.device) -> Callable:
    """One training step of config's model on the corpus, as train() takes it."""
    config = replace(config, vocab_size=len(data.vocab))
    model = bigram.MODEL_TYPES[config.model](bigram.GPTConfig(**bigram.model_settings(config)))
    model = model.to(device)
    optimizers = bigram.make_optimizers(model, config, device)
    dtype = hardware.resolve_dtype(config.dtype, device)
    scaler, tokens = bigram.make_scaler(device, dtype), np.asarray(data.tokens)
    batches = torch.Generator().manual_seed(0)

    def step() -> None:
        micro = [bigram.get_batch(tokens, config, batches) for _ in range(config.grad_accum)]
        bigram.train_step(model, optimizers, scaler, micro, config.grad_clip, device, dtype)

    return step


def step_name(config: TrainConfig) -> str:
    """What a cached step time is kept under: the settings its speed depends on."""
    settings = bigram.model_settings(config) | {k: asdict(config)[k] for k in STEP_SETTINGS}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"train step {digest} ({config.preset}, {config.dtype})"


def choose_for_machine(
    candidates: list[TrainConfig], data: corpus.Corpus, device: torch.device
) -> tuple[TrainConfig, machine.TrainingChoice]:
    """The candidate predicted to end lowest in the time budget, from step times measured here
    (or kept from an earlier run on this machine)."""
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


def prepare_and_train(
    args: argparse.Namespace, ddp: hardware.Distributed, device: torch.device
) -> str | None:
    """Everything checked, then train; returns the summary line (None on ranks other than 0)."""
    say = print if ddp.is_main else lambda *a, **k: None
    with hardware.rank_zero_first(ddp):
        config, resumed, source = prepare_settings(args, device, ddp)
        data = prepare_corpus(config, resumed or source, resumed is not None, say)
    candidates, choice = machine_candidates(args, config, device, ddp), None
    if candidates:
        config, choice = choose_for_machine(candidates, data, device)
    run = bigram.start_run(config, data, device, ddp, resume=resumed, init_from=source)
    run.teacher = load_teacher(config, data.vocab, device)
    if ddp.is_main and resumed is not None:
        runlog.trim_log(runlog.log_path(config.out), run.step)
    if choice is not None:
        run.elapsed_before = choice.measured_for  # the budget includes the measurement
    preset_picked = not args.resume and not args.preset
    say(describe(run, choice.line() if choice else None, preset_picked))
    with stop_requests() as stop:
        try:
            return bigram.train(run, stop)
        except bigram.TrainingStopped as e:
            raise UserError(stopped_early(*e.args)) from None


def load_teacher(
    config: TrainConfig, vocab: list[str], device: torch.device
) -> bigram.Teacher | None:
    """--teacher's checkpoints as one model (several: their ensemble), which must know the run's
    characters by the same ids; None without --teacher."""
    if not config.teacher:
        return None
    for path in config.teacher:
        if files.unreadable_reason(Path(path)) == "not found":
            raise UserError(f"--teacher: there is no checkpoint at {path}")
    model, taught = bigram.model_from_checkpoints(config.teacher, device)
    if taught != vocab:
        raise UserError(
            f"--teacher {' '.join(config.teacher)} knows other characters than {config.data} "
            "has: a teacher must be trained on the same text"
        )
    model.requires_grad_(False)
    return bigram.Teacher(model, config.distill_weight, config.distill_temperature)


def stopped_early(run: bigram.Run, why: str) -> str:
    """Why a run ended with no model to show for it, and what it kept."""
    kept = "nothing was saved"
    if math.isfinite(run.best_val_loss):
        kept = f"{run.config.out} keeps the best model (iter {run.best_step}, val loss "
        kept += f"{run.best_val_loss:.4f})"
    if run.bad_loss is not None:
        return (f"training diverged: the loss became {run.bad_loss} by iter {run.step}; {kept}; "
                "try a lower --lr")  # fmt: skip
    return f"the run stopped at iter {run.step} before any evaluation ({why}): {kept}"


@contextmanager
def checkpoint_lock(args: argparse.Namespace, ddp: hardware.Distributed) -> Iterator[None]:
    """One run per checkpoint at a time: rank 0 holds a lock beside it while the run trains."""
    if not ddp.is_main:
        yield
        return
    out = checkpoint_path(args)
    files.check_writable(out, "checkpoint")  # and its folder exists, for the lock file
    with files.exclusive_lock(out, "checkpoint"):
        yield


def train(args: argparse.Namespace) -> str | None:
    """Train as the flags say; returns the summary line (None on ranks other than 0)."""
    device = hardware.resolve_device(args.device or "auto")
    hardware.reuse_freed_memory()
    ddp, device = hardware.setup_distributed(device, args.backend or "")
    with checkpoint_lock(args, ddp):
        return prepare_and_train(args, ddp, device)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.plot:
            print(f"wrote {runlog.plot_logs(args.plot)}")
            return 0
        summary = train(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before training, or a second Ctrl-C during it
        print("interrupted: no file was left half-written", file=sys.stderr)
        return 130
    if summary is not None:
        print(summary)
    return 0
