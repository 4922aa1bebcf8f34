"""original.py: the re-implementation of the original gpt.py that bench.py times is a real model."""

import torch

from scratchgpt import original

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, dropout=0.2)
VOCAB_SIZE = 65


def test_original_model_learns_like_gpt_py():
    # The re-implementation of the original is a real model: its loss starts near ln(vocab) and
    # generation continues the context one token at a time.
    torch.manual_seed(0)
    shape = dict(TINY)
    model = original.original_model(shape, VOCAB_SIZE)
    data = torch.randint(VOCAB_SIZE, (1000,))
    x, y = original.original_get_batch(data, shape["block_size"], shape["batch_size"])
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(VOCAB_SIZE)).item()) < 0.5
    out = model.generate(x[:1, :5], max_new_tokens=40)  # past block_size: the window slides
    assert out.shape == (1, 45) and torch.equal(out[:, :5], x[:1, :5])
