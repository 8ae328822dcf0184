"""Reading an entry script's command line: flags, or a JSON/YAML config file that flags override.

Every script parses through :func:`parse_arguments`, so a flag, a JSON file and a YAML file are three
spellings of one configuration and a bad one is a one-line :class:`~finetuning.errors.UserError`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from finetuning.errors import UserError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def _config_to_flags(config: dict[str, Any]) -> list[str]:
    """Spell a config file's settings as flags, so that flags given after them override them."""
    flags: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        rendered = [
            json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else str(v) for v in values
        ]
        flags += [f"--{key}", *rendered]
    return flags


def read_config_file(path: str) -> dict[str, Any]:
    config_path = Path(path)
    if not config_path.is_file():
        raise UserError("config file not found", path=path)
    try:
        text = config_path.read_text(encoding="utf-8")
        if config_path.suffix == ".json":
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"cannot parse config file: {error}".splitlines()[0], path=path) from None
    if not isinstance(config, dict):
        raise UserError("a config file must hold a mapping of flag names to values", path=path)
    return config


def expand_config_file(argv: list[str]) -> list[str]:
    """Turn ``[config.yaml, --flag, v]`` or ``[--config, config.yaml, ...]`` into plain flags (file first)."""
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        return _config_to_flags(read_config_file(argv[0])) + argv[1:]
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise UserError("--config needs a file path", field="config")
        rest = argv[:position] + argv[position + 2 :]
        return _config_to_flags(read_config_file(argv[position + 1])) + rest
    return argv


def parse_arguments(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse flags (optionally after a leading JSON/YAML config file) into one instance of each dataclass."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=expand_config_file(argv)))
    except ValueError as error:
        raise UserError(str(error).splitlines()[0]) from None
