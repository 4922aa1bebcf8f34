"""python MODEL.py --chat NAME: a conversation with a character of the text the model learned.

Tiny Shakespeare is dialogue. Each speech is the speaker's name and a colon on a line of their
own, the speech, then a blank line:

    ROMEO:
    Good morrow, fair lady.

    JULIET:
    ...

so a model trained on it has learned how a reply is shaped. Each line you type becomes a speech
in that form, under your name (--as); the model then reads the conversation and writes the next
speech under the name it answers as (--chat). A reply ends where its speech ends: at a blank
line, at a line that opens another speaker's turn, or at a cap on its length. The model reads the
newest whole turns that fit its context; older ones drop out of what it reads, not out of the
transcript.
"""

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field

from scratchgpt.cli import UserError, read_line

# A line that opens a speech: one to four capitalised words and a colon (ROMEO:, KING RICHARD
# III:, First Citizen:). In Tiny Shakespeare 99.8% of speeches open so, and 3 of its 25,558
# lines of speech look so.
SPEAKER_LINE = re.compile(r"[A-Z][A-Za-z']*(?: [A-Z][A-Za-z']*){0,3}:")
MAYBE_SPEAKER_LINE = re.compile(r"[A-Z][A-Za-z']*(?: [A-Z][A-Za-z']*){0,3}(?: |:)?|")
# Whom you speak as without --as: ROMEO, or JULIET when you talk to him.
DEFAULT_SPEAKER, PARTNER = "ROMEO", "JULIET"
REPLY_CAP = 1000  # characters: 1.1% of Tiny Shakespeare's speeches are longer
PROBE_CHARS = 600  # characters the model writes on its own to show whether it writes turns

HELP = """Type a line: it is your speech, and the model answers with the next one.
  :reset    start the conversation afresh
  :quit     leave; so do Ctrl-D, and Ctrl-C at the prompt (Ctrl-C during a reply ends it)
  :help     this text
  '::' starts a speech with ':'."""

# (the text the model reads, the most characters to write) -> the characters it writes after it
Writer = Callable[[str, int], Iterator[str]]


def turn(name: str, speech: str) -> str:
    """A speech as the corpus writes it."""
    return f"{name}:\n{speech}\n\n"


def unknown_characters(text: str, vocab: list[str]) -> str:
    return "".join(sorted(set(text) - set(vocab)))


def check_name(name: str, flag: str, vocab: list[str]) -> str:
    """A speaker's name as given (stripped), or a UserError that says what is wrong with it."""
    name = name.strip()
    if not name or ":" in name or "\n" in name:
        raise UserError(f"{flag} takes a speaker's name, such as JULIET (no colon, one line)")
    unknown = unknown_characters(name, vocab)
    if unknown:
        raise UserError(f"{flag} {name}: the model has never seen the characters {unknown!r}")
    return name


def speakers(chat: str, speak_as: str | None, vocab: list[str]) -> tuple[str, str]:
    """(you, them): the names you speak as and the model answers as, checked."""
    missing = [name for char, name in (("\n", "a newline"), (":", "a colon")) if char not in vocab]
    if missing:
        raise UserError(
            f"this model has never seen {' or '.join(missing)}, so it cannot write a speaker's "
            "turn ('NAME:' on a line of its own): --chat needs a model of text with dialogue"
        )
    them = check_name(chat, "--chat", vocab)
    default = PARTNER if them == DEFAULT_SPEAKER else DEFAULT_SPEAKER
    you = check_name(speak_as or default, "--as", vocab)
    if you == them:
        raise UserError(f"--chat and --as both name {them}: give --as the name you speak as")
    return you, them


def writes_turns(text: str) -> bool:
    """Whether text holds a speaker's turn: a speaker line right after a blank line."""
    return any(SPEAKER_LINE.fullmatch(part.split("\n", 1)[0]) for part in text.split("\n\n")[1:])


@dataclass
class Conversation:
    """The turns so far, each as the corpus writes it, and how many the model still reads."""

    you: str
    them: str
    window: int  # the model's context, in characters
    turns: list[str] = field(default_factory=list)
    dropped: bool = False  # turns have dropped out of what the model reads (told once)

    def reading(self) -> str:
        """What the model reads before its reply: the newest whole turns that fit its window
        with the reply's first line after them (the newest alone cut to fit, if it must)."""
        header = f"{self.them}:\n"
        room, kept = self.window - len(header), []
        for text in reversed(self.turns):
            if len(text) > room:
                if not kept:
                    kept.append(text[-room:] if room > 0 else "")
                self.dropped = True
                break
            kept.append(text)
            room -= len(text)
        return "".join(reversed(kept)) + header

    def transcript(self) -> str:
        return "".join(self.turns)


def read_reply(chars: Iterator[str], show: Callable[[str], None]) -> bool:
    """Show the speech in the characters the model writes, as they come; a line that could open
    another speaker's turn is held back until it is known not to. True when the speech reached
    its end, False when the characters ran out first (the cap)."""
    line, shown = "", 0  # the line being written, and how much of it is shown
    for char in chars:
        if char == "\n":
            if not line or SPEAKER_LINE.fullmatch(line):  # a blank line, or another speaker
                return True
            show(line[shown:] + "\n")
            line, shown = "", 0
            continue
        line += char
        if not MAYBE_SPEAKER_LINE.fullmatch(line):
            show(line[shown:])
            shown = len(line)
    show(line[shown:])
    return False


@dataclass
class Chat:
    """A conversation with the model, and where its text goes."""

    conversation: Conversation
    vocab: list[str]
    write: Writer
    cap: int
    echo: bool  # write your turns to stdout too: the input is not typed on this terminal
    tell: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def show(self, text: str) -> None:
        print(text, end="", flush=True)

    def say(self, speech: str) -> None:
        """Your speech, then the model's reply."""
        c = self.conversation
        unknown = unknown_characters(speech, self.vocab)
        if unknown:
            self.tell(f"error: the model has never seen {unknown!r}: say it another way")
            return
        c.turns.append(turn(c.you, speech))
        if self.echo:
            self.show(c.turns[-1])
        self.reply()

    def reply(self) -> None:
        """The model's speech, shown as it comes and added to the conversation."""
        c = self.conversation
        dropped_before, reading = c.dropped, c.reading()
        if c.dropped and not dropped_before:
            self.tell(
                f"note: the model reads {c.window} characters: the oldest turns drop out of "
                "what it reads (the transcript keeps them)"
            )
        self.show(f"{c.them}:\n")
        shown: list[str] = []
        ended = interrupted = False
        try:
            with closing(self.write(reading, self.cap)) as chars:
                ended = read_reply(chars, lambda text: (shown.append(text), self.show(text)))
        except KeyboardInterrupt:  # Ctrl-C ends this reply; the conversation goes on
            interrupted = True
        speech = "".join(shown)
        self.show("\n" if speech.endswith("\n") or not speech else "\n\n")  # a blank line
        if not ended and not interrupted:
            self.tell(f"(the reply stopped at {self.cap:,} characters, before its end)")
        c.turns.append(turn(c.them, speech.removesuffix("\n")))


def run_line(chat: Chat, line: str) -> bool:
    """Carry out one line of input, a command or a speech; False when it asks to leave."""
    if line.startswith(":") and not line.startswith("::"):
        command = line[1:].strip()
        if command == "quit":
            return False
        if command == "reset":
            chat.conversation.turns.clear()
            chat.tell("the conversation starts afresh")
        elif command == "help":
            chat.tell(HELP)
        else:
            chat.tell(f"error: unknown command :{command} (:help lists the commands)")
        return True
    speech = line[1:] if line.startswith("::") else line
    if speech.strip():
        chat.say(speech)
    return True


def talk(chat: Chat, probe: Writer, terminal: bool) -> None:
    """Hold the conversation until the input ends or asks to leave."""
    c = chat.conversation
    with closing(probe("\n", PROBE_CHARS)) as chars:
        own_text = "\n" + "".join(chars)
    if not writes_turns(own_text):
        chat.tell(
            f"note: in {PROBE_CHARS} characters of its own this model wrote no speaker's turn "
            f"('NAME:' on a line after a blank one), so its text may have none: expect it to go "
            f"on with the conversation's text rather than answer as {c.them}"
        )
    if terminal:
        chat.tell(f"talking with {c.them} as {c.you}: type a line to say it, :help for help")
    try:
        while run_line(chat, read_line(f"{c.you}: " if terminal else "")):
            pass
    except (EOFError, KeyboardInterrupt):  # Ctrl-D or the end of the input; Ctrl-C at the prompt
        if terminal:
            chat.tell("")
