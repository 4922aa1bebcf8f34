"""What the commands share: flags made from a config's fields, and the seed range."""

import argparse
from dataclasses import dataclass

import pytest

import bigram
from scratchgpt import train_cli
from scratchgpt.cli import (
    MAX_INT,
    MAX_SEED,
    UserError,
    add_flags,
    check_seed,
    setting,
    typed_flag,
)


@dataclass
class Settings:
    hidden: int = 3  # no help text: no flag
    n_layer: int = setting(6, "blocks")
    lr: float = setting(1e-3, "learning rate")
    rope: bool = setting(False, "rotary positions")
    norm: str = setting("layer", "the norm", ("layer", "rms"))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, Settings)
    return parser.parse_args(argv)


def test_each_field_with_help_becomes_a_flag_of_its_type():
    args = parse("--n-layer", "4", "--lr", "0.01", "--no-rope", "--norm", "rms")
    assert (args.n_layer, args.lr, args.rope, args.norm) == (4, 0.01, False, "rms")
    assert not hasattr(args, "hidden")


def test_flags_not_given_are_none_so_a_preset_can_fill_them():
    assert vars(parse()) == {"n_layer": None, "lr": None, "rope": None, "norm": None}


def test_a_value_outside_the_choices_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse("--norm", "batch")
    assert "invalid choice: 'batch'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1" * 401, str(MAX_INT + 1), str(-MAX_INT - 1)])
def test_a_number_beyond_64_bits_is_refused_as_the_flag_is_read(capsys, value):
    with pytest.raises(SystemExit):
        parse("--n-layer", value)
    error = capsys.readouterr().err.splitlines()[-1]
    assert "argument --n-layer" in error and f"is beyond {MAX_INT:,}" in error
    assert parse("--n-layer", str(MAX_INT)).n_layer == MAX_INT


def test_a_number_that_is_not_one_is_named(capsys):
    with pytest.raises(SystemExit):
        parse("--n-layer", "four")
    assert "argument --n-layer: invalid int value: 'four'" in capsys.readouterr().err


def test_a_switch_turned_off_is_named_as_typed():
    assert typed_flag("rope", False) == "--no-rope" and typed_flag("rope", True) == "--rope"
    assert typed_flag("n_embd", 0) == "--n-embd"


def test_every_model_setting_is_a_flag_of_bigram_py():
    flags = bigram.model_settings(bigram.GPTConfig()).keys() - {"vocab_size"}  # from the corpus
    args = vars(train_cli.parse_args([], bigram.TrainConfig))
    assert flags <= args.keys()


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_a_seed_out_of_range_is_refused(seed):
    with pytest.raises(UserError, match="--seed must be between 0 and"):
        check_seed(seed)
