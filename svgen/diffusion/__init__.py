"""The noise process alone: per-base DDPM schedules (``schedule.py``) and timestep adjustment
(``timestep_adjust.py``). The training objective and the joint sampler use them from
``svgen.system``.

Kept apart from the networks (as DiT keeps ``diffusion/`` apart from ``models.py``).
"""
