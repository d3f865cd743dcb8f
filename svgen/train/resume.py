"""Which checkpoint a run starts from, and which settings may differ from the ones that wrote it.

A resumed run continues the same training, so its recorded config must be the one that trains.
Settings that the checkpoint does not hold (how long to run, how often to log, save and
validate, speed levers that keep the maths, tracking and evaluation) take their new value on
resume; so does the learning rate, which the checkpoint does hold and which is re-applied after
loading. Every other change (model, data, batch, objective, optimizer betas and decay, ZeRO
stage, precision, seed, the shards) would silently train something else, or not load: it is
refused with an error listing the keys. Accepted changes are recorded: in the checkpoint's and
out_dir's config.yaml, in out_dir/config_changes.jsonl, on the tracker run and in the export.
"""

from __future__ import annotations

from pathlib import Path

from svgen.config import Config, ConfigError, config_from_yaml, flatten, to_dict

RESUMABLE = ("train.steps", "train.log_every", "train.max_nonfinite_steps", "train.check_frozen", "train.out_dir",
             "train.ckpt.", "train.val.", "train.perf.", "train.parallel.activation_checkpointing",
             "train.source.loader_workers", "train.source.max_bad_samples", "train.source.allow_pipe",
             "train.optim.lr", "train.optim.grad_clip", "train.optim.warmup_steps", "train.optim.schedule",
             "track.", "eval.", "sample.", "prep.")
"""Keys (or key prefixes ending in '.') that may change when a run resumes."""


class ResumeError(RuntimeError):
    """A run cannot resume as asked; the message says why and what to do."""


def resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def config_changes(stored_yaml: str, cfg: Config) -> dict[str, tuple]:
    """Dotted key -> (stored value, new value) for every setting that differs."""
    try:
        old = flatten(to_dict(config_from_yaml(stored_yaml, where="the checkpoint's config.yaml")))
    except ConfigError as e:
        raise ResumeError(f"cannot read the config the checkpoint was written with: {e}") from None
    new = flatten(to_dict(cfg))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_changes(changes: dict[str, tuple], checkpoint: Path) -> dict[str, tuple]:
    """The accepted changes; raise :class:`ResumeError` naming every refused one."""
    refused = {k: v for k, v in changes.items() if not resumable(k)}
    if refused:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise ResumeError(
            f"cannot resume {checkpoint} with changed settings: {listed}{more}. They are fixed for a run (the "
            f"checkpoint was trained with the old values): drop those --set overrides (the run's config is "
            f"{checkpoint / 'config.yaml'}), or start a new run in another train.out_dir. What may change on "
            f"resume: {', '.join(RESUMABLE)}")
    return changes


def plan_start(checkpoints: list[Path], resume: str) -> Path | None:
    """The explicit checkpoint to load for ``resume`` ('none' or a folder), or None for 'auto'
    (chosen by verification). Refuse anything that would overwrite existing checkpoints."""
    if resume == "auto":
        return None
    if resume == "none":
        if checkpoints:
            raise ResumeError(f"train.out_dir already holds checkpoints ({', '.join(p.name for p in checkpoints[-3:])} "
                              f"in {checkpoints[0].parent}): continue them with --resume auto, or start over in a "
                              "new train.out_dir (svgen never overwrites a checkpoint)")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise ResumeError(f"--resume {resume}: no such checkpoint folder")
    newer = [p for p in checkpoints if p.name > path.name and p.resolve() != path.resolve()]
    if newer:
        raise ResumeError(f"--resume {resume} would train over newer checkpoints in train.out_dir "
                          f"({', '.join(p.name for p in newer)}): move them out of {newer[0].parent} first, or "
                          "resume into a new train.out_dir")
    return path


def apply_lr(sched, lr: float) -> None:
    """Re-apply the configured learning rate after a checkpoint restored the old one (the LR
    scheduler's base rates and every parameter group's current rate)."""
    sched.base_lrs = [lr for _ in sched.base_lrs]
    for group, lam in zip(sched.optimizer.param_groups, sched.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * lam(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
