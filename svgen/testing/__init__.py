"""Fixtures that tests and benchmarks share: media files with exactly known timing
(``media.py``) and shards written directly (``shards.py``). Not imported by the rest of svgen."""
