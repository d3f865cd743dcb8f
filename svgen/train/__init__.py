"""Distributed training: DeepSpeed engine setup, EMA, checkpoints, the loop (launch/train.py)."""
