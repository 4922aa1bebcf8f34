"""What a checkpoint holds, written and read here only.

A checkpoint (checkpoints/<name>.pt) is a dict saved with torch.save:

- "model_args": the model's settings (GPTConfig's fields) and "model_type" (gpt or bigram);
- "vocab": the characters, in id order; "model": the weights (a state_dict);
- "iter": the step of the saved model, "best_val_loss": its validation loss.

A training run adds what --resume needs to continue exactly: "config" (every setting of the run),
"optimizer" (AdamW's state), "muon" (Muon's, when the run uses it), "elapsed_s" (seconds trained),
"rng" (the seed; each step's randomness derives from it and the step) and "corpus" (the length and
hash of the tokens it trains on). A checkpoint may lack the keys added to this list over time:
upgrade() fills them in as it is read, and with_switch_defaults() the switches added since it was
written, so every checkpoint ever written loads, generates and resumes.
"""

import math
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from scratchgpt import ensemble, files, machine
from scratchgpt.cli import UserError

# The repository's checkpoint folder, wherever the scripts are run from.
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
REQUIRED_KEYS = ("model_args", "vocab", "model", "iter", "best_val_loss")
RESUME_KEYS = ("config", "optimizer", "elapsed_s")

# Switches that were measured and removed (docs/results.md): switched off, they are the model
# without them; switched on, the checkpoint is refused as holding an unknown setting.
REMOVED_SWITCHES = dict(pair_embedding=False, logit_cap=0.0, value_embeddings=False,
                        cautious_decay=False)  # fmt: skip


def default_path(dataset: str) -> Path:
    """Where a dataset's model is trained to, and generated from, by default."""
    return CHECKPOINT_DIR / f"{dataset}.pt"


def training_state(
    model_type: str, model: nn.Module, optimizers: list, vocab: list[str], config: dict,
    step: int, best_val_loss: float, elapsed_s: float, corpus_identity: dict,
) -> dict:  # fmt: skip
    """A training run's checkpoint: the model, and all that --resume needs to continue it."""
    settings = {f.name: getattr(model.config, f.name) for f in fields(model.config)}
    state = {
        "model_args": settings | {"model_type": model_type},
        "vocab": vocab,
        "model": model.state_dict(),
        "optimizer": optimizers[0].state_dict(),  # AdamW's
        "iter": step,
        "best_val_loss": best_val_loss,
        "rng": {"seed": config["seed"], "next_step": step},  # bigram.step_seed
        "config": config,
        "elapsed_s": elapsed_s,
        "corpus": corpus_identity,
    }
    if len(optimizers) > 1:
        state["muon"] = optimizers[1].state_dict()
    return state


def save_checkpoint(state: dict, path: Path | str, replace: bool = True) -> None:
    """Atomic: a crash, a kill or a full disk while saving leaves the previous checkpoint.
    A run's first save (replace=False) creates the file only if no other program did meanwhile."""
    try:
        with files.signals_held(), files.atomic_file(Path(path), replace=replace) as f:
            torch.save(state, f)
    except FileExistsError:
        raise UserError(
            f"checkpoint {path} was created by another program while this run trained: it is not "
            "replaced; train again into another --out"
        ) from None
    except OSError as e:
        kept = "the previous one there is intact" if replace else "nothing was written there"
        raise UserError(f"cannot save checkpoint {path}: {e.strerror or e}; {kept}") from None


def load_checkpoint(
    path: Path | str, device: torch.device | str = "cpu",
    missing: Callable[[Path], str] | None = None,
) -> dict:  # fmt: skip
    """A checkpoint, loaded safely (weights_only=True refuses pickled code instead of running it)
    and upgraded to the current format. missing(path) is the error when there is no file."""
    path = Path(path)
    reason = files.unreadable_reason(path)
    if reason == "not found":
        raise UserError(missing(path) if missing else f"checkpoint {path} not found; train one "
                        "first with: python bigram.py")  # fmt: skip
    if reason is not None:
        raise UserError(f"checkpoint {path} {reason}")
    try:
        with warnings.catch_warnings():  # odd files make torch warn, then fail: we explain below
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds of error for a damaged file
        code = files.pickled_imports(path)
        if code:
            raise UserError(
                f"refusing to load {path}: it contains pickled code (it would call "
                f"{', '.join(sorted(set(code)))}); a checkpoint holds only weights and settings"
            ) from None
        reason = "not a file torch wrote" if "Weights only" in str(e) else first_line(e)
        raise UserError(f"checkpoint {path} is truncated or corrupt ({reason})") from None
    if not isinstance(saved, dict) or any(k not in saved for k in REQUIRED_KEYS):
        raise UserError(f"{path} is not a ScratchGPT checkpoint (missing model, vocab or settings)")
    return upgrade(saved)


def upgrade(saved: dict) -> dict:
    """The checkpoint in the current format: every rule for older checkpoints is here, but for
    the switches it lacks, which take their defaults once its settings are read against the
    config (with_switch_defaults)."""
    if isinstance(saved["model_args"], dict):
        saved["model_args"] = without_removed(saved["model_args"])
    if isinstance(saved.get("config"), dict):
        saved["config"] = without_removed(saved["config"])
        if "model" in saved["config"]:  # the model type's earlier name
            saved["config"]["model_type"] = saved["config"].pop("model")
    saved.setdefault("corpus", None)  # no record of the corpus: nothing to compare on --resume
    return saved


def with_switch_defaults(settings: dict, config_class: type) -> dict:
    """settings, with each switch of config_class they lack at its default. A switch defaults to
    the model and training of 2019 (cli.setting), so a checkpoint written before it existed
    holds that: a classic model with AdamW and a cosine schedule, a modern one without split_qkv
    one qkv matrix, one without residual_scalars none."""
    switches = {f.name: f.default for f in fields(config_class) if f.metadata.get("switch")}
    return switches | settings


def without_removed(settings: dict) -> dict:
    """settings less the removed switches that are off (REMOVED_SWITCHES)."""
    return {k: v for k, v in settings.items() if REMOVED_SWITCHES.get(k, object()) != v}


def has_type(value, expected: type) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, but not to a setting
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def check_fields(values: dict, cls, what: str) -> None:
    """values could build cls (a dataclass): known names only, each of its field's type."""
    types = {f.name: f.type for f in fields(cls)}
    for name, value in values.items():
        if name not in types:
            raise UserError(f"{what}: unknown setting {name!r}")
        if not has_type(value, types[name]):
            raise UserError(f"{what}: {name} should be {types[name].__name__}, got {value!r}")


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def model_config(saved: dict, path: Path | str, model_types: dict) -> tuple[str, object]:
    """The model type (a key of model_types) and config (its class's config_class) a checkpoint
    declares, checked against its vocabulary before anything is built; the switches an older one
    lacks are filled in (with_switch_defaults)."""
    if not isinstance(saved["model_args"], dict):
        raise UserError(f"{path}: its model settings are not a dictionary")
    args = dict(saved["model_args"])
    model_type = args.pop("model_type", None)
    if model_type not in model_types:
        known = ", ".join(model_types)
        raise UserError(f"{path}: unknown model type {model_type!r} (known: {known})")
    config_class = model_types[model_type].config_class
    args = with_switch_defaults(args, config_class)
    saved["model_args"] = args | {"model_type": model_type}
    check_fields(args, config_class, f"{path}'s model settings")
    if "vocab_size" not in args:
        raise UserError(f"{path}'s model settings: vocab_size is missing")
    try:
        config = config_class(**args)
    except ValueError as e:
        raise UserError(f"{path}'s model settings: {e}") from None
    vocab = saved["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
        raise UserError(f"{path}: its vocabulary is not a list of characters")
    if len(vocab) != config.vocab_size or len(set(vocab)) != len(vocab):
        raise UserError(
            f"{path}: its vocabulary has {len(vocab)} characters ({len(set(vocab))} distinct) "
            f"but the model expects {config.vocab_size}"
        )
    return model_type, config


def model_from_checkpoint(
    saved: dict, model_types: dict, device: torch.device | str = "cpu",
    path: Path | str = "the checkpoint", batch_size: int = 1,
) -> nn.Module:  # fmt: skip
    """The model a checkpoint (load_checkpoint) holds, of one of model_types (bigram.MODEL_TYPES),
    its settings and weights checked, on device (a name --device takes: "auto" is the best here),
    where it is known first to fit with batch_size sequences' KV caches."""
    model_type, config = model_config(saved, path, model_types)
    model_class = model_types[model_type]
    device = machine.resolve_device(device)
    advice = "ask for fewer --num-samples" if batch_size > 1 else "choose a smaller shape"
    machine.check_memory(model_class, config, batch_size, training=False, device=device,
                         advice=advice)  # fmt: skip
    model = model_class(config)
    load_weights(model, saved["model"], path)
    return model.to(device)


def load_models(
    paths: list[Path], model_types: dict, device: torch.device | str,
    missing: Callable[[Path], str] | None = None, batch_size: int = 1,
) -> tuple[nn.Module, list[str]]:  # fmt: skip
    """The model of one checkpoint, or several checkpoints' ensemble (ensemble.py), ready to
    predict batch_size sequences at once on device (model_from_checkpoint), and the vocabulary
    they share; missing(path) says what to do about one not found."""
    models, vocab = [], None
    for path in paths:
        saved = load_checkpoint(path, "cpu", missing)  # the weights go to the device with the model
        if vocab is not None and saved["vocab"] != vocab:
            raise UserError(
                f"{path} and {paths[0]} know different characters: the models of an ensemble "
                "must share a vocabulary (train them on the same text)"
            )
        models.append(model_from_checkpoint(saved, model_types, device, path, batch_size).eval())
        vocab = saved["vocab"]
    return (models[0] if len(models) == 1 else ensemble.Ensemble(models)), vocab


def load_weights(
    model: nn.Module, weights: dict, path: Path | str, old_vocab: int | None = None
) -> None:
    """A checkpoint's weights into model, which must have their shapes. Given the checkpoint's
    vocabulary size (a fine-tune on text with new characters), the model's may be larger: the
    trained characters' rows (embedding, head, bigram table) are copied, the new characters' rows
    keep the fresh initialisation that training gives them."""
    own = model.state_dict()  # shares storage with the parameters
    new_vocab = model.config.vocab_size
    try:
        if old_vocab is None:
            model.load_state_dict(weights)
            return
        if weights.keys() != own.keys():
            raise ValueError("different parameter names")
        for name, weight in weights.items():
            target = own[name]
            sizes = zip(weight.shape, target.shape, strict=False)
            fits = all(a == b or (a, b) == (old_vocab, new_vocab) for a, b in sizes)
            if weight.dim() != target.dim() or not fits:
                raise ValueError(f"{name} has shape {tuple(weight.shape)}")
            with torch.no_grad():
                target[tuple(slice(0, n) for n in weight.shape)].copy_(weight)
    except (AttributeError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit its settings ({first_line(e)})") from None


def check_resumable(saved: dict, path, config_class) -> None:
    """A checkpoint holds the training state --resume continues, each part of the right kind;
    the switches of an older one's settings are filled in (with_switch_defaults)."""
    if not all(key in saved for key in RESUME_KEYS):
        raise UserError(f"--resume: {path} holds a model but not the training state to continue")
    if not isinstance(saved["config"], dict) or not isinstance(saved["optimizer"], dict):
        raise UserError(f"--resume: {path}'s training state is damaged")
    saved["config"] = with_switch_defaults(saved["config"], config_class)
    check_fields(saved["config"], config_class, f"--resume: {path}'s training settings")
    identity = saved["corpus"]
    if identity is not None and not (
        isinstance(identity, dict)
        and has_type(identity.get("chars"), int)
        and isinstance(identity.get("sha256"), str)
    ):
        raise UserError(f"--resume: {path}'s record of its corpus is damaged")
    for name, kind in {"iter": int, "best_val_loss": float, "elapsed_s": float}.items():
        value = saved[name]
        if not has_type(value, kind):
            raise UserError(f"--resume: {path}'s {name} should be {kind.__name__}, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"--resume: {path}'s {name} is {value}, which cannot be continued")


def start_from(saved: dict, model: nn.Module, path) -> None:
    """A fine-tune's start: the trained weights of saved into model, whose vocabulary holds the
    checkpoint's characters first and may add new ones (load_weights)."""
    load_weights(model, saved["model"], path, old_vocab=len(saved["vocab"]))


def model_shape(saved: dict, names: tuple[str, ...]) -> dict:
    """The settings a checkpoint's model fixes, of names."""
    return {name: saved["model_args"][name] for name in names}


def restore_training(
    saved: dict, model: nn.Module, optimizers: list, path
) -> tuple[int, float, float]:
    """The model's and optimizers' state from a checkpoint that check_resumable accepted;
    returns where the run stands: its step, best validation loss and seconds trained."""
    try:
        model.load_state_dict(saved["model"])
        optimizers[0].load_state_dict(saved["optimizer"])
        if len(optimizers) > 1:
            optimizers[1].load_state_dict(saved["muon"])
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"--resume: damaged state in {path} ({first_line(e)})") from None
    return saved["iter"], saved["best_val_loss"], saved["elapsed_s"]
