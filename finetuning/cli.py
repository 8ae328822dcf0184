"""Reading an entry script's command line: flags, or a JSON/YAML config file that flags override.

Every script parses through :func:`parse_arguments`, so a flag, a JSON file and a YAML file are three
spellings of one configuration and a bad one is a one-line :class:`~finetuning.errors.UserError` (with a
"did you mean" for a misspelt flag), never a usage dump. :func:`exit_if_help` prints the script's own flags,
grouped, before torch or transformers is imported; ``--help_all`` adds every ``TrainingArguments`` flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from finetuning.errors import UserError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
HELP_ALL = "--help_all"


def flag(default: Any, help_text: str, **metadata: Any) -> Any:
    """A dataclass field that ``HfArgumentParser`` turns into a flag: its default, its ``--help`` text and any
    other argparse setting (``choices``, ``aliases``), so each flag is declared on one line."""
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


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


def _raise_one_line(message: str) -> NoReturn:
    """argparse's ``error``: ``argument --peft: invalid choice ...`` becomes ``--peft: invalid choice ...``."""
    raise UserError(re.sub(r"^argument (--?[\w-]+)(/\S+)?: ", r"\1: ", message))


def _unknown_flags_error(unknown: list[str], known: Sequence[str]) -> UserError:
    flag = next((item for item in unknown if item.startswith("-")), None)
    if flag is None:
        return UserError(f"unexpected argument '{unknown[0]}' (flags are spelt --name value)")
    name = flag.split("=", 1)[0]
    close = difflib.get_close_matches(name, [option for option in known if option.startswith("--")], n=1, cutoff=0.7)
    hint = f" (did you mean {close[0]}?)" if close else f" (see --help; {HELP_ALL} lists every flag)"
    return UserError(f"{name}: no such flag{hint}")


def parse_arguments(
    dataclass_types: tuple[type, ...], argv: list[str] | None = None, *, description: str | None = None
) -> tuple[Any, ...]:
    """Parse flags (optionally after a leading JSON/YAML config file) into one instance of each dataclass."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--help" if item == HELP_ALL else item for item in argv]
    parser = HfArgumentParser(dataclass_types, description=description)
    parser.error = _raise_one_line  # type: ignore[method-assign]
    flags = expand_config_file(argv)
    _, unknown = parser.parse_known_args(flags)  # before the dataclasses, whose setup has side effects
    if unknown:
        raise _unknown_flags_error(unknown, list(parser._option_string_actions))
    try:
        return tuple(parser.parse_args_into_dataclasses(args=flags))
    except ValueError as error:
        raise UserError(str(error).splitlines()[0]) from None


def _describe_field(item: dataclasses.Field[Any]) -> str:
    choices = item.metadata.get("choices")
    default = item.default if item.default is not dataclasses.MISSING else None
    value = "{" + ",".join(choices) + "}" if choices else "[true|false]" if isinstance(default, bool) else "VALUE"
    head = f"  --{item.name} {value}".rstrip()
    help_text = item.metadata.get("help", "")
    if default not in (None, "", False):
        help_text += f" (default: {default})"
    body = textwrap.fill(help_text, width=116, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return f"{head}\n{body}"


def format_help(
    script: str, description: str, groups: Sequence[tuple[str, type]], training_flags: Sequence[str]
) -> str:
    """The script's own flags by group, after its description; ``TrainingArguments`` flags by name only."""
    lines = [
        f"usage: {script} [CONFIG.yaml | --config CONFIG.json] [--flag VALUE ...]",
        "",
        description.strip(),
        "",
        "Flags after a config file override it; a run's finetune_args.json is such a file. "
        f"{HELP_ALL} describes every flag.",
    ]
    for title, group in groups:
        lines += ["", f"{title}:"]
        lines += [_describe_field(item) for item in dataclasses.fields(group) if item.init]
    lines += ["", f"training (transformers.TrainingArguments; {HELP_ALL} describes these and all the others):"]
    lines += textwrap.wrap(
        " ".join(f"--{name}" for name in training_flags), width=116, initial_indent="  ", subsequent_indent="  "
    )
    return "\n".join(lines)


def exit_if_help(
    argv: list[str] | None,
    description: str | None,
    groups: Sequence[tuple[str, type]],
    training_flags: Sequence[str],
) -> None:
    """On ``-h``/``--help``: print :func:`format_help` and exit 0, before any heavy import."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(format_help(Path(sys.argv[0]).name, description or "", groups, training_flags))
        sys.exit(0)
