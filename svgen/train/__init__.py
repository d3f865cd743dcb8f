"""Distributed training: DeepSpeed engine set-up (``engine.py``), speed levers (``perf.py``), EMA,
checkpoints (all resumable state), fault guards, resume rules, validation, provenance, and the
training loop (``loop.py``, started by launch/train.py)."""
