"""What a finished run directory holds for inference: its base model, adapter and prompt template.

Everything that decides what the model sees is taken from what training saved: the adapter's base from
``adapter_config.json``, the prompt template from ``prompt_template.json``. Each path is checked before
``from_pretrained`` can turn a typo into a hub lookup or a pickled file into code execution.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finetuning.data.templates import TEMPLATE_FILE, PromptTemplate, get_template, load_template_name
from finetuning.errors import UserError

logger = logging.getLogger("finetuning")


ADAPTER_CONFIG = "adapter_config.json"


ADAPTER_SAFETENSORS = "adapter_model.safetensors"


ADAPTER_PICKLE = "adapter_model.bin"


DEFAULT_TEMPLATE = "alpaca"


def _looks_local(name: str) -> bool:
    """Anything but an ``owner/name`` hub id that is not a local path: a typo'd directory must fail at once,
    not after the hub client's retries."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the adapter config: {error}".splitlines()[0], path=str(path)) from None
    if not isinstance(config, dict):
        raise UserError("expected a JSON object", path=str(path))
    return config


def _check_adapter_dir(adapter_path: str, allow_pickle: bool) -> Path:
    adapter_dir = Path(adapter_path)
    if not adapter_dir.is_dir():
        raise UserError("no such adapter directory", path=adapter_path, field="peft_model_path")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        hint = (
            " (it holds a full model: pass it as --base_model_path)" if (adapter_dir / "config.json").is_file() else ""
        )
        raise UserError(
            f"no {ADAPTER_CONFIG}: not an adapter directory{hint}", path=adapter_path, field="peft_model_path"
        )
    if not (adapter_dir / ADAPTER_SAFETENSORS).is_file():
        if not (adapter_dir / ADAPTER_PICKLE).is_file():
            raise UserError(
                f"no {ADAPTER_SAFETENSORS}: the adapter weights are missing", path=adapter_path, field="peft_model_path"
            )
        if not allow_pickle:
            raise UserError(
                f"only a pickled {ADAPTER_PICKLE} (unpickling can run arbitrary code): pass "
                "--allow_pickle if you trust it, or re-save the adapter as safetensors",
                path=adapter_path,
                field="peft_model_path",
            )
    return adapter_dir


def _check_model_dir(model_path: str, allow_pickle: bool, *, from_adapter: bool) -> None:
    """Fail with one line before ``from_pretrained`` turns a missing or pickled model into a traceback."""
    field = "base_model_path"
    if not _looks_local(model_path):
        return  # a hub name: from_pretrained reports whether it can be had
    path = Path(model_path).expanduser()
    if not path.is_dir():
        if from_adapter:
            raise UserError(
                f"the adapter's base model '{model_path}' (base_model_name_or_path in {ADAPTER_CONFIG}) "
                "does not exist here: pass --base_model_path",
                field=field,
            )
        hint = "" if "/" in model_path else " (hub models are named owner/name)"
        raise UserError(f"no such model directory{hint}", path=model_path, field=field)
    if not (path / "config.json").is_file():
        raise UserError("no config.json: not a model directory", path=model_path, field=field)
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and any(path.glob("*.bin")) and not allow_pickle:
        raise UserError(
            "only pickled *.bin weights (unpickling can run arbitrary code): pass --allow_pickle if you trust them",
            path=model_path,
            field=field,
        )


def resolve_paths(
    base_model_path: str | None, peft_model_path: str | None, allow_pickle: bool
) -> tuple[str, str | None]:
    """(base model, adapter directory or None), each checked to exist in a loadable form."""
    if peft_model_path is None and base_model_path is not None:
        base = Path(base_model_path)
        if (base / ADAPTER_CONFIG).is_file() and not (base / "config.json").is_file():
            logger.info("%s holds an adapter: loading it as --peft_model_path", base_model_path)
            base_model_path, peft_model_path = None, base_model_path
    if peft_model_path is None:
        assert base_model_path is not None
        _check_model_dir(base_model_path, allow_pickle, from_adapter=False)
        return base_model_path, None
    adapter_dir = _check_adapter_dir(peft_model_path, allow_pickle)
    from_adapter = base_model_path is None
    if from_adapter:
        base_model_path = _read_adapter_config(adapter_dir).get("base_model_name_or_path")
        if not isinstance(base_model_path, str) or not base_model_path:
            raise UserError(f"{ADAPTER_CONFIG} names no base model: pass --base_model_path", path=peft_model_path)
    _check_model_dir(base_model_path, allow_pickle, from_adapter=from_adapter)
    return base_model_path, peft_model_path


def resolve_template(override: str | None, *model_dirs: str | None) -> tuple[PromptTemplate, str | None]:
    """The prompt template (and chat template name) training saved, the first found in ``model_dirs``."""
    for directory in model_dirs:
        if directory is None or not Path(directory).is_dir():
            continue
        name = load_template_name(directory)
        if name is None:
            continue
        saved = json.loads((Path(directory) / TEMPLATE_FILE).read_text(encoding="utf-8"))
        chat_template = saved.get("chat_template") if isinstance(saved, dict) else None
        if override is not None and override != name:
            logger.warning("prompting with --prompt_template %s, but the model was trained with '%s'", override, name)
        return get_template(override or name), chat_template
    if override is None:
        logger.warning(
            "no %s next to the model: prompting with the '%s' template (set --prompt_template)",
            TEMPLATE_FILE,
            DEFAULT_TEMPLATE,
        )
    return get_template(override or DEFAULT_TEMPLATE), None
