"""MODEL.py --interactive: prompts and commands typed line by line, here through a pipe."""

import os
import signal
import subprocess
import sys

import pytest
from support import REPO, main_error

import MODEL
from scratchgpt import interactive
from scratchgpt.cli import MAX_CHARS

SETTINGS = "temp 1.0, top-k off, top-p off, chars 10, seed 1337, keep off"  # from the flags below


# float32 weights: the same text on every machine, and no timing of the two kinds of weights
WEIGHTS = ["--weights", "float32"]


def command(play_model, *flags: str) -> list[str]:
    model = ["--checkpoint", str(play_model), *WEIGHTS]
    return [sys.executable, str(REPO / "MODEL.py"), *model, "-i", *flags]


def session(play_model, typed: str, *flags: str) -> subprocess.CompletedProcess:
    """Run a session on the typed text; it must end with status 0 when its input ends."""
    result = subprocess.run(
        command(play_model, "--num-tokens", "10", *flags),
        input=typed, capture_output=True, encoding="utf-8", timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def turns(stdout: str, *lengths: int) -> list[str]:
    """stdout cut into continuations of these lengths, each followed by a newline on the screen
    unless it ends with one."""
    parts = []
    for length in lengths:
        part, stdout = stdout[:length], stdout[length:]
        if not part.endswith("\n"):
            assert stdout.startswith("\n"), stdout
            stdout = stdout[1:]
        parts.append(part)
    assert stdout == ""
    return parts


def continuation(play_model, capsys, prompt: str, *flags: str) -> str:
    """What MODEL.py without --interactive writes after prompt (and before its last newline)."""
    argv = ["--checkpoint", str(play_model), *WEIGHTS, "--prompt", prompt, "--num-tokens", "10"]
    argv += flags
    assert MODEL.main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith(prompt) and text.endswith("\n")
    return text[len(prompt) : -1]


def test_each_line_is_continued_by_the_characters_asked_for_until_the_input_ends(play_model):
    result = session(play_model, "KING:\n:chars 5\nQUEEN:")  # no newline at the very end
    assert [len(part) for part in turns(result.stdout, 10, 5)] == [10, 5]
    assert result.stderr.splitlines() == [SETTINGS.replace("chars 10", "chars 5")]  # no banner


def test_a_line_is_the_prompt_model_py_gets_with_its_newline_or_without_after_a_backslash(
    play_model, capsys
):
    result = session(play_model, ":temp 0\nKING:\nQUEEN:\nKIN\\\n")
    prompts = ["KING:\n", "QUEEN:\n", "KIN"]
    expected = [continuation(play_model, capsys, p, "--temperature", "0") for p in prompts]
    assert turns(result.stdout, 10, 10, 10) == expected


def test_a_seed_makes_a_continuation_reproducible(play_model, capsys):
    result = session(play_model, "KING:\n:seed 5\nKING:\n:seed 6\nKING:\n", "--seed", "5")
    first, again, other = turns(result.stdout, 10, 10, 10)
    assert first == again == continuation(play_model, capsys, "KING:\n", "--seed", "5")
    assert other != first


def test_keep_on_continues_from_the_text_so_far_and_clear_forgets_it(play_model, capsys):
    typed = ":keep on\nKING:\n:seed 2\n\n:seed 3\nQUEEN:\n:clear\n:seed 2\n\n"
    result = session(play_model, typed, "--seed", "1")
    king, more, queen, afresh = turns(result.stdout, 10, 10, 10, 10)
    assert king == continuation(play_model, capsys, "KING:\n", "--seed", "1")
    # An empty line goes on where the text stopped; a prompt starts a line of its own.
    text = "KING:\n" + king
    assert more == continuation(play_model, capsys, text, "--seed", "2")
    text += more if more.endswith("\n") else more + "\n"
    assert queen == continuation(play_model, capsys, text + "QUEEN:\n", "--seed", "3")
    assert afresh == continuation(play_model, capsys, "\n", "--seed", "2") != more


def test_a_prompt_after_the_text_so_far_starts_a_line_of_its_own():
    vocab = sorted(set("KING:\nab"))
    assert interactive.model_input("KING:\nab", "KING:\n", vocab) == "KING:\nab\nKING:\n"
    assert interactive.model_input("KING:\nab\n", "KING:\n", vocab) == "KING:\nab\nKING:\n"
    assert interactive.model_input("KING:\nab", "", vocab) == "KING:\nab"  # an empty line: more
    assert interactive.model_input("", "", vocab) == "\n"  # with nothing to go on from: a newline
    assert interactive.model_input("ab", "KING:", sorted(set("KING:ab"))) == "abKING:"  # no \n


def test_unknown_characters_are_named_and_the_session_goes_on(play_model):
    result = session(play_model, "KING 日本\nKING:\n")
    assert result.stderr.splitlines() == [
        "error: prompt: characters not in the vocabulary: '日', '本'"
    ]
    assert len(turns(result.stdout, 10)[0]) == 10


def test_bad_commands_say_what_is_wrong_in_one_line_and_change_nothing(play_model):
    bad = [":temp -1", ":temp nan", ":top-k 0", ":top-p 0", ":chars x", ":seed -1", ":keep"]
    bad += [":tmep 0.5", ":chars 99999999999999999999"]
    result = session(play_model, "\n".join([*bad, ":settings", "KING:"]))
    *errors, settings = result.stderr.splitlines()
    assert len(errors) == len(bad) and settings == SETTINGS
    for line, typed in zip(errors, bad, strict=True):
        assert line.startswith("error: ") and f"{typed.split()[0]} " in line, line
    assert len(turns(result.stdout, 10)[0]) == 10


def test_help_names_every_command_and_quit_leaves_at_once(play_model):
    result = session(play_model, ":help\n:quit\nKING:\n")
    for name in [*interactive.SETTINGS, "clear", "settings", "help", "quit"]:
        assert f"\n  :{name} " in result.stderr, name
    assert result.stdout == ""


def test_ctrl_c_stops_a_continuation_and_at_the_prompt_ends_the_session(play_model):
    child = subprocess.Popen(
        command(play_model, "--num-tokens", str(MAX_CHARS)), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
    )  # fmt: skip
    try:
        child.stdin.write("KING:\n")
        child.stdin.flush()
        assert child.stdout.read(1)  # the endless continuation has begun
        child.send_signal(signal.SIGINT)
        child.stdin.write(":chars 3\nKING:\n:settings\n")
        child.stdin.flush()
        assert "chars 3" in child.stderr.readline()
        assert "chars 3" in child.stderr.readline()  # :settings: the session waits for a line
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0 and stderr == ""
    assert 0 < len(stdout) < 100_000_000 and stdout.endswith("\n")


@pytest.mark.parametrize(
    "flags", [["--num-samples", "2"], ["--prompt", "KING"], ["--prompt-file", "p.txt"],
              ["--output", "out.txt"], ["--no-stream"]],
)  # fmt: skip
def test_flags_that_do_not_apply_to_a_session_are_refused(play_model, capsys, flags):
    message = main_error(MODEL.main, ["--checkpoint", str(play_model), "-i", *flags], capsys)
    assert f"{flags[0]} cannot be used with it" in message


def test_windows_line_ends_are_read_as_line_ends(play_model):
    result = session(play_model, ":chars 5\r\nKING:\r\n")
    assert result.stderr.splitlines() == [SETTINGS.replace("chars 10", "chars 5")]
    assert [len(part) for part in turns(result.stdout, 5)] == [5]
