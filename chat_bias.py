"""Does a newline bias (ChatRWKV's rule) make --chat's replies better? A one-off measurement.

    python chat_bias.py pretrained/shakespeare.pt 100

Each of the replies answers one of the opening speeches below, as `MODEL.py --chat` asks it
(your turn, then the reply's header), sampled at temperature 1 with and without the bias. The
reply ends as chat.read_reply ends it, or at chat.REPLY_CAP characters. ChatRWKV's rule, for a
character model: where a reply could end (after a newline), the next newline's logit is lowered
while the reply is shorter than SHORT characters, and raised once it is longer than LONG, by up
to MAX_BIAS. Printed: the share of replies cut by the cap, and the median and 90th-percentile
lengths, beside those of Tiny Shakespeare's speeches.
"""

import statistics
import sys

import torch

from bigram import KVCache, model_from_checkpoint
from scratchgpt import chat, checkpoint, corpus

SHORT, LONG, MAX_BIAS = 40, 150, 3.0  # ChatRWKV's CHAT_LEN_SHORT, CHAT_LEN_LONG and cap
OPENINGS = ["Good morrow, fair lady.", "Wilt thou walk with me?", "What news from the court?",
            "I love thee.", "Where is thy father?", "Speak, man: what hast thou seen?"]  # fmt: skip


def bias(length: int, after_newline: bool) -> float:
    if not after_newline:
        return 0.0
    if length < SHORT:
        return (length - SHORT) / 10
    return min(MAX_BIAS, max(0.0, (length - LONG) * 0.25))


@torch.inference_mode()
def reply(model, vocab, text: str, biased: bool, generator) -> tuple[int, bool]:
    """The length of the model's speech after text, and whether it ended before the cap."""
    ids = torch.tensor([[vocab.index(c) for c in text[-model.config.block_size :]]])
    cache = KVCache(model.config, 1, "cpu", torch.float32)
    logits, _ = model(ids, kv_cache=cache)
    written, newline = "", vocab.index("\n")
    while len(written) < chat.REPLY_CAP:
        row = logits[0, -1].clone()
        row[newline] += bias(len(written), written.endswith("\n")) if biased else 0.0
        token = torch.multinomial(row.softmax(-1), 1, generator=generator).item()
        written += vocab[token]
        lines = written.split("\n")
        if written.endswith("\n") and (lines[-2] == "" or chat.SPEAKER_LINE.fullmatch(lines[-2])):
            return len("\n".join(lines[:-2])), True
        logits, _ = model(torch.tensor([[token]]), kv_cache=cache)
    return len(written), False


def summary(lengths: list[int], ended: list[bool]) -> str:
    deciles = statistics.quantiles(lengths, n=10)
    cut = 1 - sum(ended) / len(ended)
    median = statistics.median(lengths)
    return f"cut by the cap {cut:.1%}, median {median:.0f}, 90th {deciles[-1]:.0f}"


def main(path: str, n: int) -> None:
    saved = checkpoint.load_checkpoint(path)
    model, vocab = model_from_checkpoint(saved).eval(), saved["vocab"]
    text = corpus.DATASET_FILES["shakespeare"].read_text(encoding="utf-8")
    lengths = [len(s.split("\n", 1)[1]) for s in text.split("\n\n") if "\n" in s]
    print(f"Tiny Shakespeare's {len(lengths)} speeches: median {statistics.median(lengths):.0f}, "
          f"90th {statistics.quantiles(lengths, n=10)[-1]:.0f}, over {chat.REPLY_CAP}: "
          f"{sum(x > chat.REPLY_CAP for x in lengths) / len(lengths):.1%}")  # fmt: skip
    for biased in (False, True):
        generator = torch.Generator().manual_seed(1)
        results = [
            reply(model, vocab, chat.turn("ROMEO", OPENINGS[i % len(OPENINGS)]) + "JULIET:\n",
                  biased, generator)
            for i in range(n)
        ]  # fmt: skip
        label = "with the bias" if biased else "without"
        print(f"{label}: {n} replies, " + summary(*zip(*results, strict=True)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
