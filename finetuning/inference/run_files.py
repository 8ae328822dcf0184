"""What a finished run directory holds for inference: its base model, adapter and prompt rendering.

Everything that decides what the model sees is taken from what training saved: the adapter's base from
``adapter_config.json`` (found on this machine, never looked up on the hub), the prompt template and chat
rendering from ``prompt_template.json``. Each path is checked before ``from_pretrained`` can turn a typo into a
hub lookup or a pickled file into code execution.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finetuning.data.chat_templates import get_chat_template
from finetuning.data.templates import TEMPLATE_FILE, Rendering, get_template, load_rendering
from finetuning.errors import UserError
from finetuning.model.loading import local_model_directory

logger = logging.getLogger("finetuning")


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
DEFAULT_TEMPLATE = "alpaca"
OWN_CHAT_TEMPLATE = "tokenizer"  # --chat_template tokenizer: the tokenizer's own chat template


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


def _cached_hub_snapshot(name: str) -> Path | None:
    """The local snapshot directory of hub model ``name`` if the Hugging Face cache holds its config, else None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def locate_adapter_base(name: str, adapter_dir: Path) -> str:
    """The adapter's base (``base_model_name_or_path``) on this machine, never looked up on the hub.

    Runs trained here store an absolute path. A relative one (older runs) is tried from the working directory,
    then from the adapter directory and each folder above it (training ran in one of them, most likely); a hub
    name must be in the Hugging Face cache. Anything else fails at once, naming --base_model_path.
    """
    relative = Path(name).expanduser()
    candidates = [relative]
    if not relative.is_absolute():
        candidates += [folder / relative for folder in (adapter_dir.resolve(), *adapter_dir.resolve().parents)]
    for candidate in candidates:
        if candidate.is_dir():
            if candidate != relative:
                logger.info("the adapter's base model '%s' found at %s", name, candidate)
            return str(candidate)
    snapshot = _cached_hub_snapshot(name) if name.count("/") == 1 and not relative.is_absolute() else None
    if snapshot is not None:
        logger.info("the adapter's base model '%s' loads from the local hub cache (%s)", name, snapshot)
        return str(snapshot)
    raise UserError(
        f"the adapter's base model '{name}' (base_model_name_or_path in {ADAPTER_CONFIG}) is neither a local "
        "directory nor in the Hugging Face cache: pass --base_model_path (its local copy, or a hub name to download)",
        field="base_model_path",
    )


def _check_model_dir(model_path: str, allow_pickle: bool) -> None:
    """Fail with one line before ``from_pretrained`` turns a missing or pickled model into a traceback."""
    field = "base_model_path"
    path = local_model_directory(model_path, field)
    if path is None:
        return
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
        _check_model_dir(base_model_path, allow_pickle)
        return base_model_path, None
    adapter_dir = _check_adapter_dir(peft_model_path, allow_pickle)
    if base_model_path is None:
        named = _read_adapter_config(adapter_dir).get("base_model_name_or_path")
        if not isinstance(named, str) or not named:
            raise UserError(f"{ADAPTER_CONFIG} names no base model: pass --base_model_path", path=peft_model_path)
        base_model_path = locate_adapter_base(named, adapter_dir)
    _check_model_dir(base_model_path, allow_pickle)
    return base_model_path, peft_model_path


def resolve_rendering(prompt_template: str | None, chat_template: str | None, *model_dirs: str | None) -> Rendering:
    """How to prompt the model: what training saved (the first ``prompt_template.json`` in ``model_dirs``),
    unless the flags say otherwise. ``--chat_template NAME`` (or ``tokenizer``, for the tokenizer's own) prompts
    every instruction as chat; an explicit ``--prompt_template`` alone prompts instructions with that template."""
    saved = next((found for found in map(_saved_rendering, model_dirs) if found is not None), None)
    if saved is None and prompt_template is None and chat_template is None:
        logger.warning(
            "no %s next to the model: prompting with the '%s' template (set --prompt_template or --chat_template)",
            TEMPLATE_FILE,
            DEFAULT_TEMPLATE,
        )
    template = get_template(prompt_template) if prompt_template else saved.template if saved else None
    rendering = Rendering(template or get_template(DEFAULT_TEMPLATE))
    if chat_template is not None:
        named = None if chat_template == OWN_CHAT_TEMPLATE else get_chat_template(chat_template).name
        rendering = Rendering(rendering.template, named, chat=True)
    elif saved is not None:
        rendering = Rendering(rendering.template, saved.chat_template, saved.chat and prompt_template is None)
    if saved is not None and (saved.template.name, saved.chat) != (rendering.template.name, rendering.chat):
        chat = f"the '{saved.chat_template}' chat template" if saved.chat_template else "the tokenizer's chat template"
        learned = chat if saved.chat else f"the '{saved.template.name}' prompt template"
        logger.warning("prompting differently from training, where the model learned: %s", learned)
    return rendering


def _saved_rendering(directory: str | None) -> Rendering | None:
    return load_rendering(directory) if directory is not None and Path(directory).is_dir() else None
