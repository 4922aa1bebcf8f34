"""MODEL.py --chat: a conversation in the corpus's turns, on a tiny model of a made-up play."""

import io
import os
import pty
import select
import subprocess
import sys

from support import REPO, TINY_RUN, main_error

import bigram
import MODEL
from scratchgpt import chat


def talk(play_model, monkeypatch, capsys, typed: str, *flags: str) -> tuple[str, str]:
    """A conversation on the typed text, as through a pipe; its stdout and stderr."""
    monkeypatch.setattr("sys.stdin", io.StringIO(typed))
    argv = ["--checkpoint", str(play_model), "--chat", "KING", "--as", "QUEEN", *flags]
    assert MODEL.main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def speeches(transcript: str) -> list[tuple[str, str]]:
    """(speaker, speech) of each turn of a transcript in the corpus's form."""
    assert transcript.endswith("\n\n")
    turns = [part.split(":\n", 1) for part in transcript[:-2].split("\n\n")]
    return [(name, speech) for name, speech in turns]


def test_each_line_is_a_speech_in_the_corpus_form_and_each_reply_is_the_other_speakers(
    play_model, monkeypatch, capsys
):
    out, _ = talk(play_model, monkeypatch, capsys, "thou art my lord.\nspeak not.\n")
    turns = speeches(out)
    assert [name for name, _ in turns] == ["QUEEN", "KING", "QUEEN", "KING"]
    assert [turns[0][1], turns[2][1]] == ["thou art my lord.", "speak not."]
    assert all(speech.strip() for _, speech in turns)


def test_the_model_reads_the_turns_then_the_header_of_its_reply():
    conversation = chat.Conversation("QUEEN", "KING", window=100)
    conversation.turns.append(chat.turn("QUEEN", "thou art my lord."))
    assert conversation.reading() == "QUEEN:\nthou art my lord.\n\nKING:\n"
    assert not conversation.dropped


def test_a_reply_ends_at_a_blank_line_and_what_follows_is_not_shown():
    shown = []
    ended = chat.read_reply(iter("speak not.\nthe king.\n\nFOOL:\nand"), shown.append)
    assert ended and "".join(shown) == "speak not.\nthe king.\n"


def test_a_reply_ends_where_another_speakers_turn_opens_and_that_line_is_never_shown():
    shown = []
    ended = chat.read_reply(iter("Nay, sir.\nFirst Citizen:\nHear me"), shown.append)
    assert ended and "".join(shown) == "Nay, sir.\n"


def test_a_line_that_only_starts_like_a_speakers_name_is_shown():
    shown = []
    chat.read_reply(iter("Come: away.\n\n"), shown.append)
    assert "".join(shown) == "Come: away.\n"


def test_a_reply_that_never_ends_stops_at_the_cap_and_says_so(play_model, monkeypatch, capsys):
    out, err = talk(play_model, monkeypatch, capsys, "thou art my lord.\n", "--num-tokens", "3")
    reply = speeches(out)[1][1]
    assert len(reply) <= 3
    assert "(the reply stopped at 3 characters, before its end)" in err.splitlines()


def test_the_oldest_turns_drop_out_of_what_the_model_reads():
    conversation = chat.Conversation("QUEEN", "KING", window=40)
    for speech in ("thou art my lord.", "the king shall speak.", "not."):
        conversation.turns.append(chat.turn("QUEEN", speech))
    # The newest turn and the reply's header fit the 40 characters; the one before it does not.
    assert conversation.reading() == "QUEEN:\nnot.\n\nKING:\n"
    assert conversation.dropped
    assert conversation.transcript().startswith("QUEEN:\nthou art my lord.\n\n")  # all of it


def test_a_turn_longer_than_the_context_is_cut_to_its_end():
    conversation = chat.Conversation("QUEEN", "KING", window=20)
    conversation.turns.append(chat.turn("QUEEN", "the king shall speak not."))
    reading = conversation.reading()
    assert len(reading) == 20 and reading.endswith("speak not.\n\nKING:\n")


def test_the_user_is_told_once_when_turns_start_to_drop(play_model, monkeypatch, capsys):
    typed = "thou art my lord.\n" * 4  # each turn is longer than the tiny model's 16 characters
    _, err = talk(play_model, monkeypatch, capsys, typed)
    notes = [line for line in err.splitlines() if "oldest turns drop" in line]
    assert len(notes) == 1


def test_an_unknown_name_is_refused_before_the_conversation(play_model, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("thou art.\n"))
    argv = ["--checkpoint", str(play_model), "--chat", "KÖNIG"]
    assert "--chat KÖNIG: the model has never seen the characters 'Ö'" in main_error(
        MODEL.main, argv, capsys
    )


def test_a_line_with_an_unknown_character_gets_one_line_and_the_conversation_goes_on(
    play_model, monkeypatch, capsys
):
    out, err = talk(play_model, monkeypatch, capsys, "thou art my lörd.\nspeak not.\n")
    assert "error: the model has never seen 'ö': say it another way" in err.splitlines()
    assert [name for name, _ in speeches(out)] == ["QUEEN", "KING"]  # the second line only


def test_the_input_may_end_mid_line_or_mid_conversation(play_model, monkeypatch, capsys):
    out, _ = talk(play_model, monkeypatch, capsys, "thou art my lord.\nspeak not.")
    assert [speech for _, speech in speeches(out)][2] == "speak not."
    assert talk(play_model, monkeypatch, capsys, "")[0] == ""  # no line at all: no turn


def test_quit_ends_and_reset_starts_afresh(play_model, monkeypatch, capsys):
    out, err = talk(play_model, monkeypatch, capsys, "thou.\n:reset\nnot.\n:quit\nart.\n")
    assert [speech for name, speech in speeches(out) if name == "QUEEN"] == ["thou.", "not."]
    assert "the conversation starts afresh" in err.splitlines()


def test_windows_line_ends_are_read_as_line_ends(play_model, monkeypatch, capsys):
    out, _ = talk(play_model, monkeypatch, capsys, "thou art.\r\n")
    assert speeches(out)[0] == ("QUEEN", "thou art.")


def test_the_transcript_is_the_conversation_and_a_seed_repeats_it(
    play_model, monkeypatch, capsys, tmp_path
):
    typed = "thou art my lord.\nspeak not.\n"
    out, _ = talk(play_model, monkeypatch, capsys, typed, "--output", str(tmp_path / "t.txt"))
    assert (tmp_path / "t.txt").read_text() == out
    again, _ = talk(play_model, monkeypatch, capsys, typed)
    assert again == out
    other, _ = talk(play_model, monkeypatch, capsys, typed, "--seed", "2")
    assert other != out


def test_flags_that_mean_nothing_in_a_conversation_are_refused(play_model, capsys):
    argv = ["--checkpoint", str(play_model), "--chat", "KING", "--num-samples", "2", "-i"]
    assert "--interactive, --num-samples cannot be used" in main_error(MODEL.main, argv, capsys)


def test_a_model_that_cannot_write_a_turn_is_refused(monkeypatch, capsys, tmp_path):
    corpus = tmp_path / "line.txt"
    corpus.write_text("the king shall speak and the fool shall not. " * 500, encoding="utf-8")
    out = tmp_path / "line.pt"
    flags = ["--max-iters", "1", "--eval-interval", "1", *TINY_RUN]
    assert bigram.main(["--data", str(corpus), "--out", str(out), *flags]) == 0
    capsys.readouterr()
    argv = ["--checkpoint", str(out), "--chat", "king", "--as", "fool"]
    assert "has never seen a newline" in main_error(MODEL.main, argv, capsys)


def test_a_model_without_speaker_turns_is_said_to_have_none(monkeypatch, capsys, tmp_path):
    corpus = tmp_path / "prose.txt"
    text = "the king: shall speak\nand the fool shall not.\n"  # no blank line, so no turn
    corpus.write_text(text * 500, encoding="utf-8")
    out = tmp_path / "prose.pt"
    flags = ["--max-iters", "30", "--eval-interval", "30", "--lr", "3e-2", *TINY_RUN]
    assert bigram.main(["--data", str(corpus), "--out", str(out), *flags]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("the king.\n"))
    argv = ["--checkpoint", str(out), "--chat", "king", "--as", "fool", "--num-tokens", "20"]
    assert MODEL.main(argv) == 0
    assert "wrote no speaker's turn" in capsys.readouterr().err


def read_until(fd: int, text: str, screen: str = "") -> str:
    """What a program writes to a pseudo-terminal (line ends as "\n"), read until the screen
    holds text one more time than it did, or the program closes the terminal."""
    wanted = screen.count(text) + 1
    while screen.count(text) < wanted:
        if not select.select([fd], [], [], 300)[0]:
            raise TimeoutError(f"no {text!r} in {screen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the program ended and the terminal closed
            break
        screen += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
    return screen


def test_on_a_terminal_a_banner_and_your_name_prompt_you_and_your_lines_are_not_repeated(
    play_model,
):
    controller, terminal = pty.openpty()
    argv = [sys.executable, str(REPO / "MODEL.py"), "--checkpoint", str(play_model)]
    process = subprocess.Popen(
        [*argv, "--chat", "KING", "--as", "QUEEN"],
        stdin=terminal, stdout=terminal, stderr=terminal,
        env={**os.environ, "TERM": "dumb"},  # no escape codes from readline (bracketed paste)
    )  # fmt: skip
    os.close(terminal)
    screen = read_until(controller, "\nQUEEN: ")  # the banner's line, then the prompt
    os.write(controller, b"thou art my lord.\n")
    screen = read_until(controller, "\nQUEEN: ", screen)  # after the reply
    os.write(controller, b":quit\n")
    screen = read_until(controller, "\0", screen)  # never written: to the end
    assert process.wait(timeout=300) == 0, screen
    os.close(controller)
    assert "talking with KING as QUEEN: type a line to say it, :help for help" in screen
    assert "QUEEN: thou art my lord.\n" in screen  # the prompt, then your line as you typed it
    assert "\nKING:\n" in screen
    assert "QUEEN:\n" not in screen  # your turn is not written out again, as it is to a pipe
