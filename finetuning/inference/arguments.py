"""Every flag of ``inference.py``, declared once as a dataclass (so a YAML/JSON config can stand in for them).

Kept apart from :mod:`finetuning.training.arguments` because inference shares none of the training flags: it loads a
finished run (a base or merged model and/or an adapter) rather than a model to fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetuning.cli import flag
from finetuning.errors import UserError

INFERENCE_DTYPES = ("bfloat16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda", "xpu")


@dataclass
class InferenceArguments:
    """What to load, how to prompt it, how to decode, and which modes to run (in the order listed below)."""

    # --- loading -----------------------------------------------------------------------------------------
    base_model_path: str | None = flag(
        None,
        "A base model, or a full fine-tuned / merged model directory. With --peft_model_path it "
        "overrides the base named in the adapter's adapter_config.json.",
    )
    peft_model_path: str | None = flag(
        None, "An adapter directory saved by training (adapter_config.json + adapter_model.safetensors)."
    )
    tokenizer_name: str | None = flag(
        None,
        "Tokenizer path. Default: the adapter directory's tokenizer if training saved one there "
        "(it may hold added tokens), else the base model's.",
    )
    dtype: str | None = flag(
        None, "Weights dtype. Default: float32 on the CPU, bfloat16 on CUDA/XPU.", choices=INFERENCE_DTYPES
    )
    device: str = flag("auto", "Where to run: auto picks CUDA, then XPU, then the CPU.", choices=DEVICES)
    trust_remote_code: bool = flag(
        False, "Run Python code shipped inside the model directory. Off by default: only for models you trust."
    )
    allow_pickle: bool = flag(
        False,
        "Allow loading pickled weights (adapter_model.bin, pytorch_model.bin). Unpickling runs "
        "arbitrary code: only for files you trust. Safetensors are always preferred.",
    )
    prompt_template: str | None = flag(
        None,
        "Prompt template: a name (alpaca, llama2, plain) or a .json/.yaml file. Default: the one saved "
        "at training time (prompt_template.json in the adapter or model directory), else alpaca. Given "
        "alone, instructions are prompted with it even if the model was trained on chat records.",
    )
    chat_template: str | None = flag(
        None,
        "Prompt every instruction as a chat user turn, rendered by this named chat template (chatml, "
        "qwen, llama3, mistral, zephyr, llama2_chat), or by the tokenizer's own with 'tokenizer'. Default: "
        "what training saved (a model trained on chat records only is prompted as chat).",
    )

    # --- modes -------------------------------------------------------------------------------------------
    merge_and_save: str | None = flag(
        None,
        "Merge the LoRA (or IA3) adapter into its base and save a standalone model (safetensors), "
        "its tokenizer and prompt_template.json to this directory.",
    )
    infer: bool = flag(False, "Answer a few built-in sample instructions and print them.")
    instructions: list[str] | None = flag(None, "Answer these instructions and print them.")
    input_file: str | None = flag(
        None,
        "Answer every record of a training-format file (.json, .jsonl, .csv; instruction or chat "
        "records, the output/response field optional); needs --output_file.",
    )
    output_file: str | None = flag(
        None,
        "JSON Lines file for --input_file: each input record plus a 'prediction' field. Written "
        "atomically (a temporary file renamed into place).",
    )
    batch_size: int = flag(8, "Prompts generated together for --input_file, --infer and --instructions.")
    bench: bool = flag(
        False,
        "Benchmark: warm-up, then timed runs over the sample instructions at batch size 1; prints "
        "first-token latency and new tokens per second.",
    )
    bench_runs: int = flag(3, "--bench: timed passes over the sample instructions.")
    interactive: bool = flag(
        False, "Read instructions from stdin, one a line, until EOF or 'exit'; stream each answer."
    )
    serve: bool = flag(False, "Serve the model over HTTP, OpenAI-compatible (see docs/inference.md).")

    # --- decoding ----------------------------------------------------------------------------------------
    max_new_tokens: int = flag(128, "Most tokens generated per answer.")
    do_sample: bool = flag(False, "Sample instead of greedy (or beam) decoding.")
    temperature: float | None = flag(None, "Sampling temperature (needs --do_sample; default 1.0).")
    top_p: float | None = flag(None, "Nucleus sampling mass (needs --do_sample; default 1.0).")
    top_k: int | None = flag(None, "Sample among the k likeliest tokens (needs --do_sample; default 50, 0: all).")
    repetition_penalty: float = flag(1.0, "Penalty (>1) on tokens already in the prompt or the answer; 1.0: none.")
    num_beams: int = flag(1, "Beam search width; 1: no beam search.")
    seed: int = flag(42, "Random seed (transformers.set_seed), for reproducible sampling.")

    def __post_init__(self) -> None:
        """Refuse contradictory settings before any model is loaded: a flag must never be silently ignored."""
        if self.base_model_path is None and self.peft_model_path is None:
            raise UserError("pass --base_model_path and/or --peft_model_path", field="base_model_path")
        modes = (self.merge_and_save, self.infer, self.instructions, self.input_file, self.bench, self.interactive)
        if not any(modes) and not self.serve:
            raise UserError(
                "nothing to do: pass --infer, --instructions, --input_file, --interactive, --bench, --merge_and_save "
                "or --serve"
            )
        if self.serve and any(modes):
            raise UserError("--serve runs alone: pass it without the other modes", field="serve")
        if self.serve and self.num_beams > 1:
            raise UserError("--serve decodes greedily or by sampling: beam search cannot stream", field="num_beams")
        if self.input_file and not self.output_file:
            raise UserError("--input_file needs --output_file", field="output_file")
        if self.output_file and not self.input_file:
            raise UserError("--output_file needs --input_file", field="input_file")
        if self.input_file and Path(self.output_file).resolve() == Path(self.input_file).resolve():
            raise UserError("would overwrite --input_file", path=self.output_file, field="output_file")
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        unused = [f"--{name}" for name, value in sampling.items() if value is not None]
        if unused and not self.do_sample:
            verb = "applies" if len(unused) == 1 else "apply"
            raise UserError(f"{', '.join(unused)} {verb} only when sampling: add --do_sample")
        for name, value, low in (
            ("max_new_tokens", self.max_new_tokens, 1),
            ("batch_size", self.batch_size, 1),
            ("num_beams", self.num_beams, 1),
            ("bench_runs", self.bench_runs, 1),
            ("top_k", self.top_k, 0),
        ):
            if value is not None and value < low:
                raise UserError(f"must be at least {low}, got {value}", field=name)
        if self.temperature is not None and self.temperature <= 0:
            raise UserError("must be > 0 (for greedy decoding leave out --do_sample)", field="temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError("must be in (0, 1]", field="top_p")
        if self.repetition_penalty <= 0:
            raise UserError("must be > 0", field="repetition_penalty")
