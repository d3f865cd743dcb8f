"""Noise processes, timestep adjustment, the training objective and the joint sampler.

Kept apart from the networks (as DiT keeps ``diffusion/`` apart from ``models.py``).
"""
