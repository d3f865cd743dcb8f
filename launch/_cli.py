"""Arguments and config loading shared by the launch scripts: --config and repeatable --set, a
config taken from exported weights when --config is left out, and config errors turned into one
line on stderr (exit status 2) instead of a traceback."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from svgen.config import Config, ConfigError, load_config


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
    try:
        if args.config:
            return load_config(args.config, sets)
        weights = getattr(args, "weights", None)
        if defaults and not (weights and Path(weights).is_file()):
            return load_config(None, sets)
        if not weights:
            raise ConfigError("no config: pass --config")
        from svgen.models.weights import exported_config_yaml

        text = exported_config_yaml(weights)
        if text is None:
            raise ConfigError(f"'{weights}' carries no config: pass --config")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        return load_config(f.name, sets)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
