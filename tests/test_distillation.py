"""Distillation (scratchgpt/distillation.py, --teacher): a run also learns a trained model's
predictions."""

import pytest
import torch
from support import TINY_RUN, main_error, write_corpus

import bigram
from scratchgpt import distillation
from scratchgpt.checkpoint import load_checkpoint
from scratchgpt.ensemble import Ensemble


def gpt(seed: int) -> bigram.GPTLanguageModel:
    torch.manual_seed(seed)
    shape = dict(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0)
    return bigram.GPTLanguageModel(bigram.GPTConfig(**shape))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 11, (4, 8), generator=generator), torch.randint(0, 11, (4, 8))


def test_the_loss_mixes_the_texts_loss_and_the_kl_to_the_teacher():
    student, teacher = gpt(1), gpt(2)
    x, y = batch()
    logits, loss = student(x, y)
    mixed = distillation.Teacher(teacher, weight=0.3, temperature=2.0).mixed_loss(loss, logits, x)
    ours = (logits / 2.0).log_softmax(-1)
    theirs = (teacher(x)[0] / 2.0).log_softmax(-1)
    kl = (theirs.exp() * (theirs - ours)).sum(-1).mean()  # per character, as batchmean of rows
    torch.testing.assert_close(mixed, 0.7 * loss + 0.3 * 4.0 * kl)


def test_a_teacher_that_predicts_as_the_model_does_adds_nothing():
    model = gpt(1)
    x, y = batch()
    logits, loss = model(x, y)
    mixed = distillation.Teacher(model, weight=0.45, temperature=1.2).mixed_loss(loss, logits, x)
    torch.testing.assert_close(mixed, 0.55 * loss)


def test_learning_from_a_teacher_moves_the_model_towards_its_predictions():
    student, teacher = gpt(1), gpt(2)
    x, _ = batch()
    learn = distillation.Teacher(teacher, weight=1.0, temperature=1.0)

    def distance() -> float:
        logits, _ = student(x)
        return learn.mixed_loss(torch.tensor(0.0), logits, x).item()

    before = distance()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(5):
        logits, _ = student(x)
        learn.mixed_loss(torch.tensor(0.0), logits, x).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert distance() < 0.8 * before
    assert all(p.grad is None for p in teacher.parameters())  # the teacher only teaches


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tiny trained models of the plays, and the plays themselves."""
    folder = tmp_path_factory.mktemp("teachers")
    plays = write_corpus(folder / "plays.txt")
    paths = []
    for seed in (1, 2):
        paths.append(folder / f"teacher{seed}.pt")
        flags = ["--max-iters", "20", "--eval-interval", "20", "--seed", str(seed)]
        assert bigram.main(["--data", str(plays), "--out", str(paths[-1]), *flags, *TINY_RUN]) == 0
    return plays, paths


def test_a_run_learns_from_an_ensemble_of_teachers_and_resumes_with_them(teachers, tmp_path):
    plays, paths = teachers
    out = tmp_path / "student.pt"
    flags = ["--max-iters", "10", "--eval-interval", "10", *TINY_RUN]
    argv = ["--data", str(plays), "--out", str(out), "--teacher", *map(str, paths), *flags]
    assert bigram.main(argv) == 0
    assert load_checkpoint(out)["config"]["teacher"] == tuple(map(str, paths))
    assert bigram.main(["--resume", "--out", str(out), "--max-iters", "12"]) == 0
    assert load_checkpoint(out)["iter"] == 12


def test_the_run_hands_the_teachers_ensemble_to_training(teachers, tmp_path, monkeypatch):
    plays, paths = teachers
    seen = []
    real_step = bigram.train_on_batches

    def train_on_batches(*args, **kwargs):
        seen.append(args[-1] if len(args) > 7 else kwargs.get("teacher"))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(bigram, "train_on_batches", train_on_batches)
    argv = ["--data", str(plays), "--out", str(tmp_path / "s.pt"), "--teacher", *map(str, paths)]
    argv += ["--distill-weight", "0.2", "--max-iters", "2", "--eval-interval", "2", *TINY_RUN]
    assert bigram.main(argv) == 0
    assert seen and all(isinstance(t.model, Ensemble) and t.weight == 0.2 for t in seen)


def test_a_teacher_of_other_characters_is_refused(teachers, tmp_path, capsys):
    plays, paths = teachers
    other = tmp_path / "other.txt"
    other.write_text(plays.read_text(encoding="utf-8").upper(), encoding="utf-8")
    argv = ["--data", str(other), "--out", str(tmp_path / "s.pt"), "--teacher", str(paths[0]),
            *TINY_RUN]  # fmt: skip
    error = main_error(bigram.main, argv, capsys)
    assert "--teacher" in error and "same text" in error


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--distill-weight", "1.5"], "--distill-weight"),
        (["--distill-temperature", "0"], "--distill-temperature"),
        (["--distill-temperature", "nan"], "finite"),
    ],
)
def test_impossible_distillation_settings_are_refused(teachers, tmp_path, capsys, flags, message):
    plays, paths = teachers
    argv = ["--data", str(plays), "--out", str(tmp_path / "s.pt"), "--teacher", str(paths[0])]
    assert message in main_error(bigram.main, [*argv, *flags, *TINY_RUN], capsys)


def test_a_missing_teacher_is_named(teachers, tmp_path, capsys):
    plays, _ = teachers
    missing = tmp_path / "none.pt"
    argv = ["--data", str(plays), "--out", str(tmp_path / "s.pt"), "--teacher", str(missing)]
    error = main_error(bigram.main, [*argv, *TINY_RUN], capsys)
    assert str(missing) in error
