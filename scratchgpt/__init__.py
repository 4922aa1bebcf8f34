"""ScratchGPT's plumbing: what bigram.py (the model and its training) and MODEL.py (generation)
use but are not about. Each module is named for what it holds.

No module here imports bigram.py: where one needs something of the model file, the command hands
it over (the config class and the model types a checkpoint may hold, how a run starts and trains,
the sampler). The library never depends on the application, and `python bigram.py` loads that
file once."""
