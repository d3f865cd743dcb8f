"""Training data on the svgen side: the shard source (``source.py``: train.source.shards resolved
once), the shard reader (``loader.py``: node/worker split, shuffling, data position, damaged
samples named and skipped), cached-latent batches (``latents.py``) and synthetic sounding clips
with known sync (``synthetic.py``)."""
