"""The run report: a loss-curve picture and a model card (README.md, in the Hub's format) in output_dir.

Written from what a finished run already holds (its arguments, final metrics and the Trainer's log history),
after the model is saved: it replaces PEFT's empty card with one that says what was trained on what, how, how
well and how fast, and it needs nothing from the training loop itself.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

LOSS_CURVE_FILE = "loss_curve.png"
CARD_FILE = "README.md"
CURVE_METADATA_KEY = "series"  # PNG text chunk with the plotted points, so the picture can be checked
HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "seed",
    "bf16",
    "gradient_checkpointing",
    "max_seq_length",
    "max_source_length",
    "max_target_length",
    "dataset_concatenation",
    "train_on_inputs",
    "prompt_template",
    "chat_template",
)
METHOD_SETTINGS = {
    "lora": ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_all_linear"),
    "ptun": ("num_virtual_tokens", "ptun_hidden_size"),
    "prefix": ("num_virtual_tokens",),
    "prompt": ("num_virtual_tokens",),
    "llama_adapter": ("adapter_layers", "adapter_len"),
}


def curve_series(log_history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """``{"loss": [[step, value], ...], "eval_loss": [...], "learning_rate": [...]}`` from the Trainer's logs."""
    series: dict[str, list[list[float]]] = {"loss": [], "eval_loss": [], "learning_rate": []}
    for entry in log_history:
        for name, points in series.items():
            if name in entry and "step" in entry:
                points.append([entry["step"], float(entry[name])])
    if not series["loss"]:  # --logging_steps longer than the run: its mean loss, at its last step
        series["loss"] = [[e["step"], float(e["train_loss"])] for e in log_history if "train_loss" in e and "step" in e]
    return series


def save_loss_curve(path: Path, series: dict[str, list[list[float]]]) -> bool:
    """Train and eval loss over steps, learning rate below; False (nothing written) when no loss was logged."""
    if not series["loss"] and not series["eval_loss"]:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    figure, (loss_axes, rate_axes) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name, label, style in (("loss", "train loss", "-"), ("eval_loss", "eval loss", "o--")):
        if series[name]:
            steps, values = zip(*series[name], strict=True)
            loss_axes.plot(steps, values, style, label=label)
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    loss_axes.grid(alpha=0.3)
    if series["learning_rate"]:
        steps, values = zip(*series["learning_rate"], strict=True)
        rate_axes.plot(steps, values, color="tab:green")
    rate_axes.set_ylabel("learning rate")
    rate_axes.set_xlabel("step")
    rate_axes.grid(alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(path, format="png", dpi=100, metadata={CURVE_METADATA_KEY: json.dumps(series)})
    finally:
        plt.close(figure)
    return True


def _settings(arguments: tuple[Any, ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for group in arguments:
        merged |= group.to_dict() if hasattr(group, "to_dict") else asdict(group) if is_dataclass(group) else {}
    return merged


def _peak_memory(metrics: dict[str, float]) -> str:
    if "train_peak_memory_gib" in metrics:
        return f"{metrics['train_peak_memory_gib']} GiB (accelerator)"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    gib = kib / (2**30 if sys.platform == "darwin" else 2**20)
    return f"{gib:.2f} GiB (process peak RSS)"


def _tokens_per_second(metrics: dict[str, float], train_tokens: int | None) -> str:
    for key in ("train_steady_tokens_per_second", "train_tokens_per_second"):
        if key in metrics:
            return f"{metrics[key]:,.1f}"
    runtime, epochs = metrics.get("train_runtime"), metrics.get("epoch")
    if train_tokens and runtime and epochs:
        return f"{train_tokens * epochs / runtime:,.1f} (non-padding tokens of the data x epochs / train time)"
    return "not measured"


def _table(rows: dict[str, Any]) -> list[str]:
    return ["| | |", "| --- | --- |", *(f"| {key} | {value} |" for key, value in rows.items())]


def model_card(
    arguments: tuple[Any, ...], metrics: dict[str, float], *, train_tokens: int | None, picture: str | None
) -> str:
    """README.md text: Hub front matter (base_model, library_name, tags), then what, how, how well, how fast."""
    settings = _settings(arguments)
    base, method = settings.get("model_name_or_path") or "(trained from scratch)", settings.get("peft", "none")
    seq2seq = "max_source_length" in settings
    tags = [f"base_model:adapter:{base}", method, "transformers"] if method != "none" else ["transformers"]
    front = [
        "---",
        f"base_model: {json.dumps(base)}",
        f"library_name: {'peft' if method != 'none' else 'transformers'}",
        f"pipeline_tag: {'text2text-generation' if seq2seq else 'text-generation'}",
        "tags:",
        *(f"- {json.dumps(tag)}" for tag in [*tags, "finetuning-suite"]),
        "---",
    ]
    data = {
        "training data": settings.get("train_file") or settings.get("dataset_name"),
        "training records": metrics.get("train_samples"),
        "evaluation data": settings.get("validation_file")
        or ("held out from the training data" if metrics.get("eval_samples") else None),
        "evaluation records": metrics.get("eval_samples"),
    }
    method_rows = {"method": method} | {name: settings.get(name) for name in METHOD_SETTINGS.get(method, ())}
    hyper = {name: settings[name] for name in HYPERPARAMETERS if settings.get(name) not in (None, "", -1)}
    final = {
        key: round(value, 4) if isinstance(value, float) else value
        for key, value in metrics.items()
        if key.startswith("eval_") or key in ("train_loss", "perplexity", "epoch")
    }
    speed = {
        "train time": f"{metrics.get('train_runtime', 0):.1f} s",
        "tokens/s": _tokens_per_second(metrics, train_tokens),
        "peak memory": _peak_memory(metrics),
    }
    lines = [*front, "", f"# Fine-tuned {base}", "", f"A `{method}` fine-tune of `{base}` made with finetuning-suite."]
    for title, rows in (
        ("Data", data),
        ("Method", method_rows),
        ("Hyperparameters", hyper),
        ("Final metrics", final),
        ("Speed and memory", speed),
    ):
        lines += ["", f"## {title}", "", *_table({key: value for key, value in rows.items() if value is not None})]
    if picture:
        lines += ["", "## Loss curve", "", f"![train and eval loss, learning rate]({picture})"]
    lines += ["", "The run's full arguments are in `finetune_args.json` (usable as a config file).", ""]
    return "\n".join(lines)


def write_run_report(
    output_dir: str,
    arguments: tuple[Any, ...],
    metrics: dict[str, float],
    log_history: list[dict[str, Any]],
    *,
    train_tokens: int | None = None,
) -> list[Path]:
    """Write loss_curve.png (when anything was logged) and README.md; returns the paths written."""
    directory = Path(output_dir)
    picture = directory / LOSS_CURVE_FILE
    written = [picture] if save_loss_curve(picture, curve_series(log_history)) else []
    card = directory / CARD_FILE
    card.write_text(
        model_card(arguments, metrics, train_tokens=train_tokens, picture=picture.name if written else None),
        encoding="utf-8",
    )
    return [*written, card]
