"""The flags of ``inference.py --serve``, and llm-on-ray's ``inference.yaml`` read as those flags.

An llm-on-ray file (``model_description: {model_id_or_path, tokenizer_name_or_path, peft_model_id_or_path,
chat_template, prompt: {intro, human_id, bot_id, stop_words}}``, ``port``, ``route_prefix``, ``num_replicas``,
``name``, ``device``) becomes the flags it means, placed before the command line's, so flags override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuning.cli import flag
from finetuning.data.templates import PromptTemplate
from finetuning.errors import UserError

API_KEY_ENV = "FINETUNING_API_KEY"


@dataclass
class ServeArguments:
    """Where and how ``--serve`` listens, batches and deploys."""

    host: str = flag("127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    port: int = flag(8000, "Port to listen on.")
    served_model_name: str | None = flag(
        None, "The model id clients pass as 'model'. Default: the adapter's, else the model's, folder."
    )
    api_key: str | None = flag(
        None, f"Require 'Authorization: Bearer KEY' on /v1 routes. Default: ${API_KEY_ENV}, if set."
    )
    route_prefix: str = flag("", "Path prefix of every route, e.g. /custom-model.")
    max_batch_size: int = flag(32, "Most answers generated together in one batch.")
    batch_wait_ms: float = flag(
        5.0, "A batch waits for more requests while they come this close together (at most 10 waits)."
    )
    max_body_bytes: int = flag(1 << 20, "Largest request body accepted (413 beyond).")
    stop_words: list[str] | None = flag(
        None, "Stop strings for requests that name none (llm-on-ray's prompt.stop_words)."
    )
    prompt_format: str | None = flag(
        None,
        "A prompt layout with {instruction} (and optionally {input}) replacing the saved prompt "
        "template; llm-on-ray's prompt.intro + human_id + {instruction} + bot_id.",
    )
    config_file: str | None = flag(None, "An llm-on-ray inference.yaml; flags given with it override it.")
    ray: bool = flag(False, "Deploy on Ray Serve (requirements-ray.txt): RAY_ADDRESS's cluster, else a local Ray.")
    num_replicas: int = flag(1, "--ray: model replicas behind the route.")

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        for name in ("max_batch_size", "num_replicas", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise UserError(f"must be at least 1, got {getattr(self, name)}", field=name)
        if not 0 < self.port < 65536:
            raise UserError(f"not a port: {self.port}", field="port")
        if self.route_prefix and not self.route_prefix.startswith("/"):
            raise UserError("must start with '/'", field="route_prefix")

    def given(self) -> list[str]:
        """The flags set to something other than their default (the API key may come from the environment)."""
        defaults = ServeArguments(api_key=self.api_key)
        return [f"--{name}" for name in vars(self) if getattr(self, name) != getattr(defaults, name)]

    def prompt_template(self) -> PromptTemplate | None:
        if self.prompt_format is None:
            return None
        if "{instruction}" not in self.prompt_format:
            raise UserError("must contain {instruction}", field="prompt_format")
        with_input = self.prompt_format if "{input}" in self.prompt_format else None
        without_input = self.prompt_format.replace("{input}", "")
        if with_input is None:
            with_input = self.prompt_format.replace("{instruction}", "{instruction}\n{input}")
        return PromptTemplate(name="prompt_format", with_input=with_input, without_input=without_input)


LLM_ON_RAY_KEYS = {
    "model_id_or_path": "base_model_path",
    "tokenizer_name_or_path": "tokenizer_name",
    "peft_model_id_or_path": "peft_model_path",
    "chat_template": "chat_template",
}
TOP_LEVEL_KEYS = {
    "port": "port",
    "host": "host",
    "route_prefix": "route_prefix",
    "num_replicas": "num_replicas",
    "name": "served_model_name",
    "device": "device",
}


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def llm_on_ray_flags(path: str) -> list[str]:
    """The flags an llm-on-ray ``inference.yaml`` stands for (keys it has that mean nothing here are refused)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UserError("no such file", path=path, field="config_file")
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"cannot parse: {error}".splitlines()[0], path=path, field="config_file") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_description"), dict):
        raise UserError("expected a mapping with a model_description mapping", path=path, field="config_file")
    flags: dict[str, Any] = {}
    description = config.pop("model_description")
    prompt = description.pop("prompt", None) or {}
    for key, value in description.items():
        if key not in LLM_ON_RAY_KEYS:
            raise UserError(f"unknown key (known: {', '.join(LLM_ON_RAY_KEYS)}, prompt)", path=path, field=key)
        flags[LLM_ON_RAY_KEYS[key]] = value
    for key, value in config.items():
        if key not in TOP_LEVEL_KEYS:
            known = ", ".join(TOP_LEVEL_KEYS)
            raise UserError(f"unknown key (known: {known}, model_description)", path=path, field=key)
        flags[TOP_LEVEL_KEYS[key]] = value
    if prompt.get("human_id") or prompt.get("bot_id") or prompt.get("intro"):
        pieces = (prompt.get("intro") or "", prompt.get("human_id") or "", prompt.get("bot_id") or "")
        flags["prompt_format"] = f"{_escape(pieces[0])}{_escape(pieces[1])}{{instruction}}{_escape(pieces[2])}"
    if prompt.get("stop_words"):
        flags["stop_words"] = list(prompt["stop_words"])
    argv: list[str] = ["--serve"]  # the file describes a deployment
    for name, value in flags.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name}", *(str(item) for item in values)]
    return argv


def expand_config_file(argv: list[str]) -> list[str]:
    """``[..., --config_file inference.yaml, ...]`` -> the file's flags, then the rest of the command line."""
    if "--config_file" not in argv:
        return argv
    position = argv.index("--config_file")
    if position + 1 >= len(argv):
        raise UserError("--config_file needs a file path", field="config_file")
    return [*llm_on_ray_flags(argv[position + 1]), *argv[:position], *argv[position + 2 :]]
