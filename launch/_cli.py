"""Arguments and config loading shared by the launch scripts: --config and repeatable --set, a
config taken from exported weights when --config is left out, and config errors turned into one
line on stderr (exit status 2) instead of a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from svgen.config import Config, ConfigError, config_from_yaml, load_config


def add_config_args(ap: argparse.ArgumentParser, required: bool = True, default: str | None = None,
                    from_weights: bool = False) -> None:
    help_ = "YAML config"
    if from_weights:
        help_ += " (default: the config stored in --weights)"
    elif default:
        help_ += f" (default: {default})"
    ap.add_argument("--config", required=required and not from_weights and default is None, default=default,
                    help=help_)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted config override, repeatable (e.g. --set train.optim.lr=1e-4)")


def config_from(args: argparse.Namespace, extra: list[str] | None = None,
                defaults: bool = False) -> Config | None:
    """The config named by --config (else stored in --weights; else, with ``defaults``, the schema
    defaults) with --set and ``extra`` applied; None after printing the error when it cannot be loaded."""
    sets = list(args.set) + list(extra or [])
    weights = getattr(args, "weights", None)
    try:
        if weights and not Path(weights).is_file():
            raise ConfigError(f"--weights '{weights}' does not exist (launch/train.py writes "
                              "out_dir/export/trained_ema.safetensors)")
        if args.config:
            cfg = load_config(args.config, sets)
        elif weights:
            from svgen.models.weights import exported_config_yaml

            try:
                text = exported_config_yaml(weights)
            except Exception as e:  # safetensors raises its own error types for a file that is not one
                raise ConfigError(f"--weights '{weights}' is not a safetensors export ({e})") from None
            if text is None:
                raise ConfigError(f"'{weights}' carries no config: pass --config")
            cfg = config_from_yaml(text, sets, where=f"the config stored in '{weights}'")
        elif defaults:
            cfg = load_config(None, sets)
        else:
            raise ConfigError("no config: pass --config")
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    warn_ignored_tracking_env(cfg)
    return cfg


def warn_ignored_tracking_env(cfg: Config) -> None:
    """svgen logs to track.tracking_uri only, so the recorded config names the store; say so
    when MLFLOW_TRACKING_URI points elsewhere (a user may expect MLflow's usual precedence)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env != cfg.track.tracking_uri and cfg.track.backend != "none":
        print(f"note: MLFLOW_TRACKING_URI={env} is not used; svgen logs to track.tracking_uri="
              f"{cfg.track.tracking_uri} (pass --set track.tracking_uri={env} to use it)", file=sys.stderr)
