"""ScratchGPT's plumbing: what bigram.py (the model and its training) and MODEL.py (generation)
use but are not about. Each module is named for what it holds.

No module here imports bigram.py: where one needs something of the model file (the config class,
a checkpoint's reader, the sampler), the command hands it over. The library never depends on the
application, and `python bigram.py` loads that file once."""
