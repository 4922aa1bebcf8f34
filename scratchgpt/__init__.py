"""ScratchGPT's plumbing: what bigram.py (the model and its training) and MODEL.py (generation)
use but are not about. Each module is named for what it holds.

The modules below the commands import bigram.py for its model and training (train_cli.py, the
command line of `python bigram.py`, and interactive.py); bigram.py imports train_cli only when
its command runs, so importing either has no side effects."""
