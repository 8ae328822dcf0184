"""Training throughput: the plain HF Trainer + PEFT baseline and the project's path, side by side, one run.

Both variants train the same random-weight model (speed does not depend on the values) on the same data
with the same per-device batch, through ``transformers.Trainer``. The baseline is what the scripts this suite
replaces do; ``project`` goes through the project's own functions (PEFT builder, packing, collator,
``acceleration.optimize_for_training``) with finetune_clm.py's defaults. Printed per variant: non-pad tokens
per second over the timed steps, peak device memory, MFU (LoRA: 4N + 12·L·d·T FLOPs per token over the
device's peak) and the ratio to the first variant, plus the first step's loss (the fast path must match).

GPU (the issue's 7B config):  python bench/train_throughput.py --preset llama7b --device cuda
Real data, padded vs naive concatenation vs packing:
    python bench/train_throughput.py --preset llama7b --device cuda --data real --layouts padded,naive,packed
CPU (16-core Xeon):  python bench/train_throughput.py --preset llama110m --device cpu --seq 512 --batch 4
CI smoke:  python bench/train_throughput.py --preset tiny --device cpu --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESETS = {  # Llama-shaped configs: (hidden, intermediate, layers, heads, kv heads, vocab)
    "llama7b": (4096, 11008, 32, 32, 32, 32000),
    "llama1b": (2048, 5632, 22, 32, 4, 32000),
    "llama110m": (768, 2048, 12, 12, 12, 32000),
    "llama4layer": (2048, 5632, 4, 32, 4, 32000),  # the small warm-up model: 1B width, 4 layers
    "tiny": (64, 128, 2, 4, 4, 512),
}
PEAK_TFLOPS = {"cuda": 989.0, "cpu": 4.1}  # H100 SXM dense bf16 datasheet; 16-core AMX bf16 4096^3 measured
REAL_DATA = ("gpteacher_roleplay_alpaca.json", "gsm8k_train_alpaca.json")


def build_model(preset: str, device: str, dtype: Any, attn: str | None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, intermediate, layers, heads, kv_heads, vocab = PRESETS[preset]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=4096,
        # The ids of finetuning.model.tiny.build_tokenizer (<s>, </s>, <unk>, <pad>). The pad row of a random
        # embedding is zero: a zero vector at a sequence start stays zero through every layer, and RMSNorm's
        # backward at zero multiplies the gradient by 1/sqrt(eps) per norm, inf after ~20 layers (NaN grads).
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn or "sdpa")


def fixed_length_data(count: int, seq: int, vocab: int) -> list[dict[str, list[int]]]:
    rng = random.Random(0)
    samples = []
    for _ in range(count):
        ids = [rng.randrange(4, vocab) for _ in range(seq)]  # no special ids
        samples.append({"input_ids": ids, "labels": list(ids)})
    return samples


def real_samples(
    data_dir: Path, tokenizer_dir: Path, max_length: int, limit: int, vocab: int
) -> list[dict[str, list[int]]]:
    """Alpaca-template samples of the shared role-play + GSM8K data, tokenized as finetune_clm.py does."""
    from transformers import PreTrainedTokenizerFast

    from finetuning.data.encoding import encode_instruction
    from finetuning.data.records import load_data_file
    from finetuning.data.templates import get_template

    records = []
    for name in REAL_DATA:
        records += load_data_file(str(data_dir / name)).records
    random.Random(0).shuffle(records)
    records = records[:limit]
    if not (tokenizer_dir / "tokenizer.json").exists():
        from finetuning.model.tiny import build_tokenizer

        texts = [" ".join(record.values()) for record in records]
        build_tokenizer(texts, vocab_size=vocab).save_pretrained(tokenizer_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    template = get_template("alpaca")
    return [encode_instruction(tokenizer, template, record, max_length=max_length).as_dict() for record in records]


def layout(samples: list[dict[str, list[int]]], kind: str, block: int) -> list[dict[str, list[int]]]:
    """padded: one sample a row (padmax: padded to the block, as the old scripts did); naive: run_clm-style
    concatenation (samples see each other); packed: ours."""
    if kind in ("padded", "padmax"):
        return samples
    if kind == "naive":
        ids = [token for sample in samples for token in sample["input_ids"]]
        labels = [label for sample in samples for label in sample["labels"]]
        return [{"input_ids": ids[i : i + block], "labels": labels[i : i + block]} for i in range(0, len(ids), block)]
    from finetuning.data.packing import pack_batch

    columns = {"input_ids": [s["input_ids"] for s in samples], "labels": [s["labels"] for s in samples]}
    packed = pack_batch(columns, block)
    return [
        {"input_ids": packed["input_ids"][i], "labels": packed["labels"][i], "position_ids": packed["position_ids"][i]}
        for i in range(len(packed["input_ids"]))
    ]


class CountingCollator:
    """The project's collator, recording the non-pad tokens of every batch it makes, in order."""

    def __init__(
        self, pad_token_id: int, pad_to_multiple_of: int | None = None, lengths: tuple[int, ...] | None = None
    ) -> None:
        from finetuning.data.collator import PaddingCollator

        self.inner = PaddingCollator(pad_token_id, pad_to_multiple_of, lengths)
        self.tokens: list[int] = []
        self.positions: list[int] = []  # the same batches' rows x columns, padding included

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        self.tokens.append(sum(len(feature["input_ids"]) for feature in features))
        batch = self.inner(features)
        self.positions.append(batch["input_ids"].numel())
        return batch


class StepProfiler:
    """A Trainer callback that profiles two optimizer steps after ``skip`` and prints the operators that took
    the most time (rank 0). Profiling slows those steps: a ``+profile`` variant's throughput is not comparable."""

    def __init__(self, skip: int, cuda: bool) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        self.sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=max(skip - 1, 0), warmup=1, active=2, repeat=1),
            on_trace_ready=self.report,
        )

    def report(self, profiler: Any) -> None:
        if int(os.environ.get("RANK", "0")) == 0:
            print(profiler.key_averages().table(sort_by=self.sort, row_limit=30, max_name_column_width=60), flush=True)

    def on_train_begin(self, *_args: Any, **_kwargs: Any) -> None:
        self.profiler.start()

    def on_step_end(self, *_args: Any, **_kwargs: Any) -> None:
        self.profiler.step()

    def on_train_end(self, *_args: Any, **_kwargs: Any) -> None:
        self.profiler.stop()

    def __getattr__(self, name: str) -> Any:  # the Trainer calls every on_* event; the others do nothing
        if name.startswith("on_"):
            return lambda *_args, **_kwargs: None
        raise AttributeError(name)


LEVER_SWITCHES = {  # variant suffix -> SpeedLevers field and value (finetuning/model/levers.py has the defaults)
    "nofuse": ("fused_lora", False),
    "shared": ("shared_lora_down", True),
    "noshared": ("shared_lora_down", False),
    "nofn": ("lora_function", False),
    "layercompile": (("compile_layers_cuda", "compile_layers_cpu"), True),
    "nolayercompile": (("compile_layers_cuda", "compile_layers_cpu"), False),
    "chunkce": ("chunked_cross_entropy", True),
    "nochunkce": ("chunked_cross_entropy", False),
    "nobucket": ("packed_length_buckets", 0),
    "flex": ("packed_attention", "flex"),
    "sdpa": ("packed_attention", "sdpa"),
}


def speed_levers(levers: set[str]) -> Any:
    """The project's defaults with this variant's switches flipped."""
    import dataclasses

    from finetuning.model.levers import DEFAULT_LEVERS

    changes: dict[str, Any] = {}
    for lever in levers & LEVER_SWITCHES.keys():
        fields, value = LEVER_SWITCHES[lever]
        changes.update(dict.fromkeys((fields,) if isinstance(fields, str) else fields, value))
    return dataclasses.replace(DEFAULT_LEVERS, **changes)


def unsloth_peer_model(options: argparse.Namespace, gradient_checkpointing: bool) -> Any:
    """The peer of issue #18: Unsloth's own loader and LoRA set-up on the preset's random model (the same
    weights as the other variants', saved once, since Unsloth loads from a folder), r and alpha as the others',
    dropout 0 and no bias (its fast path), every linear layer of the decoder. ``gradient_checkpointing``: its
    default "unsloth" mode (recomputation with the saved inputs offloaded to host memory); else none.
    Unsloth patches transformers when imported, so its variants run alone in their process (main)."""
    import torch
    from unsloth import FastLanguageModel

    from finetuning.model.tiny import build_tokenizer

    folder = options.work / f"random-{options.preset}"
    if not (folder / "config.json").exists():
        model = build_model(options.preset, options.device, torch.bfloat16, None)
        model.save_pretrained(folder)
        del model
        build_tokenizer(["a tokenizer only to load the model with"], vocab_size=256).save_pretrained(folder)
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), max_seq_length=options.seq, dtype=torch.bfloat16, load_in_4bit=False, local_files_only=True
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=options.lora_rank,
        lora_alpha=2 * options.lora_rank,
        lora_dropout=0,
        bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=0,
        max_seq_length=options.seq,
    )


def run_variant(
    name: str, options: argparse.Namespace, samples: list[dict[str, list[int]]], batch: int, pad_to: int | None = None
) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainerCallback

    from finetuning.data.samples import IGNORE_INDEX
    from finetuning.model.acceleration import optimize_for_training, packed_row_lengths
    from finetuning.model.arguments import PeftArguments
    from finetuning.model.peft_setup import apply_peft, build_peft_config
    from finetuning.training.arguments import FinetuneTrainingArguments

    project = name.startswith("project")
    peer = name.startswith("unsloth")
    levers = set(name.split("+")[1:])
    speed = speed_levers(levers)
    cuda = options.device == "cuda"
    bf16 = options.precision == "bf16"
    # Weights: the GPU baseline loads bf16 (as measured in the issue); the CPU baseline keeps float32 weights
    # under bf16 autocast (the plain recipe); the project loads a frozen base in bf16 (modeling.resolve_dtype).
    half_weights = bf16 and (cuda or project or "bf16w" in levers)
    # ckpt: every decoder layer recomputed in backward; ckptN: every N-th one (transformers' every_n_layers, the
    # memory lever between none and all); offload: the checkpointed layers' inputs kept in pinned host memory
    every_n = [int(lever[4:] or 1) for lever in levers if lever[:4] == "ckpt" and (lever[4:] or "1").isdigit()]
    checkpointing = bool(every_n) and not peer  # Unsloth checkpoints in its own way (unsloth_peer_model)
    checkpoint_options = {"every_n_layers": every_n[0], "offload": "offload" in levers} if checkpointing else None
    if peer:
        model = unsloth_peer_model(options, gradient_checkpointing=bool(every_n))
    else:
        model = build_model(
            options.preset, options.device, torch.bfloat16 if half_weights else torch.float32, options.attn
        )
        # Dropout: PEFT's default (0) for the baseline, as the issue measured it; the project's own default.
        dropout = 0.05 if "dropout05" in levers else PeftArguments.lora_dropout if project else 0.0
        peft_args = PeftArguments(
            peft="lora",
            lora_rank=options.lora_rank,
            lora_alpha=2 * options.lora_rank,
            lora_dropout=dropout,
            lora_all_linear=True,
        )
        peft_config = build_peft_config(peft_args, model.config, task_type="CAUSAL_LM")
        model = apply_peft(model, peft_config, gradient_checkpointing=checkpointing)
    batch = next((int(lever[1:]) for lever in levers if lever[:1] == "b" and lever[1:].isdigit()), batch)
    args = FinetuneTrainingArguments(
        output_dir=str(options.work / name),
        per_device_train_batch_size=batch,
        max_steps=options.warmup + options.steps,
        learning_rate=0.0 if "frozen" in levers else options.learning_rate,  # frozen: the untrained reference
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=bf16,
        use_cpu=not cuda,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=options.workers,
        dataloader_pin_memory=cuda,
        auto_optimize=project,
        torch_compile="compile" in levers,
        optim="adamw_torch" if "adamw" in levers else FinetuneTrainingArguments.optim,  # default: fused on torch>=2.8
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs=checkpoint_options,
        overwrite_output_dir=True,
        train_sampling_strategy="sequential",  # same batches in the same order for every variant
    )
    packed = "position_ids" in samples[0]
    torch._dynamo.reset()  # every variant compiles its own kernels (the on-disk inductor cache stays)
    from finetuning.model import acceleration

    liger_supports = acceleration.liger_supports
    if "noliger" in levers:  # the project's path without Liger (e.g. to weigh the chunked cross-entropy on CUDA)
        acceleration.liger_supports = lambda model_type: False
    applied = optimize_for_training(model, args, enabled=project and "plain" not in levers, packed=packed, levers=speed)
    acceleration.liger_supports = liger_supports
    # packed rows padded to the few lengths finetune_clm.py uses where kernels are compiled per shape
    bucketed = packed and not pad_to and "plain" not in levers
    lengths = packed_row_lengths(args, options.seq, model, speed) if bucketed else None
    if "noguard" in levers:  # measure the masked-attention guard by removing it (finetuning.model.acceleration)
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        AttentionInterface.register("sdpa", sdpa_attention_forward)
    if "liger" in levers and not args.use_liger_kernel:
        args.use_liger_kernel = True
    collator = CountingCollator(pad_token_id=3, pad_to_multiple_of=pad_to, lengths=lengths)
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, _args, _state, _control, **_kwargs):
            marks["begin"] = time.perf_counter()

        def on_step_end(self, _args, state, _control, **_kwargs):
            if cuda:
                torch.cuda.synchronize()
            if state.global_step in (1, options.warmup, options.warmup + options.steps):
                marks[str(state.global_step)] = time.perf_counter()

    callbacks: list[Any] = [Clock()]
    if "profile" in levers:  # where a step's time goes: two steps after the untimed ones, under torch.profiler
        callbacks.append(StepProfiler(options.warmup, cuda))
    trainer = Trainer(model=model, args=args, train_dataset=samples, data_collator=collator, callbacks=callbacks)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # mathattn: SDPA's math kernel (matrix products) instead of the CPU flash kernel, whose backward took 16% of
    # the Xeon step in the profile of docs/performance.md
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]) if "mathattn" in levers else contextlib.nullcontext():
        trainer.train()
    seconds = marks[str(options.warmup + options.steps)] - marks[str(options.warmup)]
    timed = slice(options.warmup, options.warmup + options.steps)
    tokens = sum(collator.tokens[timed])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    hidden, _, layers, *_ = PRESETS[options.preset]
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    flops_per_token = 4 * frozen + 12 * layers * hidden * options.seq
    world = max(args.world_size, 1)
    result = {
        "variant": name,
        "tokens_per_s": world * tokens / seconds,
        "tokens": tokens,  # non-pad tokens of the timed steps, this process
        "seconds": seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        # every step's loss (logging_steps=1): variants compared step by step (bench/gpu_suite.sh warmup); from the
        # second step on the adapter has trained
        "losses": losses,
        # time to the first optimizer step (compilation included) and to the end of the untimed steps
        "first_step_s": marks["1"] - marks["begin"],
        "warmup_s": marks[str(max(options.warmup, 1))] - marks["begin"],
        # a step whose gradient norm is not finite trained nothing (cuDNN attention under masks, see acceleration)
        "finite_grads": all(math.isfinite(e.get("grad_norm", 0.0)) for e in trainer.state.log_history),
        # the layout's whole data set: every layout of the same samples holds the same tokens
        "rows": len(samples),
        "dataset_tokens": sum(len(sample["input_ids"]) for sample in samples),
        "supervised_tokens": sum(label != IGNORE_INDEX for sample in samples for label in sample["labels"]),
        # share of the timed batches' positions that are padding
        "pad_fraction": 1 - tokens / sum(collator.positions[timed]),
        "applied": applied,
        "liger": args.use_liger_kernel,
    }
    result["mfu"] = result["tokens_per_s"] * flops_per_token / (PEAK_TFLOPS[options.device] * 1e12)
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--seq", type=int, default=2048, help="sequence / block length")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (rows)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="the smoke test raises it to see learning")
    parser.add_argument("--attn", default=None, help="attention implementation (default sdpa)")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers")
    parser.add_argument("--data", choices=("fixed", "real"), default="fixed")
    parser.add_argument("--padded_batch", type=int, default=8, help="real data: rows per padded batch")
    parser.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data", help="real data: where")
    parser.add_argument("--layouts", default="padded,naive,packed", help="real data: layouts to compare")
    parser.add_argument(
        "--variants",
        default="baseline,project",
        help="baseline | project | unsloth (the peer, alone in its process), with +levers: dropout05, liger, "
        "compile (HF --torch_compile), plain, bf16w, ckpt, "
        "ckptN (every N-th layer), offload (with ckpt: saved inputs in host memory), noguard, noliger, "
        "adamw (unfused), bN (batch N), frozen (learning rate 0), profile, mathattn, and the "
        "SpeedLevers switches: " + ", ".join(LEVER_SWITCHES),
    )
    parser.add_argument("--work", type=Path, default=REPO / ".bench")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    options = parser.parse_args(argv)
    if "unsloth" in options.variants:
        if options.variants.count(",") or options.data != "fixed":
            parser.error("unsloth variants run alone, on fixed rows: importing unsloth patches transformers")
        import unsloth  # noqa: F401  (before transformers, as Unsloth requires)
    options.work.mkdir(parents=True, exist_ok=True)
    vocab = PRESETS[options.preset][-1]
    runs: list[tuple[str, list[dict[str, list[int]]]]] = []
    if options.data == "fixed":
        largest = max(
            [options.batch] + [int(lever[1:]) for lever in options.variants.split("+") if lever[1:].isdigit()]
        )
        samples = fixed_length_data(largest * (options.warmup + options.steps), options.seq, vocab)
        runs = [(variant, samples) for variant in options.variants.split(",")]
    else:
        real = real_samples(
            options.data_dir, options.work / f"tokenizer-{vocab}", options.seq, limit=20000, vocab=vocab
        )
        # padded and naive are the baseline's layouts; every project variant trains on the packed one
        project_variants = [variant for variant in options.variants.split(",") if variant.startswith("project")]
        for kind in options.layouts.split(","):
            samples = layout(real, kind, options.seq)
            for variant in project_variants if kind == "packed" else ["baseline"]:
                runs.append((f"{variant}:{kind}", samples))
    results = []
    for name, samples in runs:
        variant, _, kind = name.partition(":")
        padded = kind in ("padded", "padmax")
        pad_to = options.seq if kind == "padmax" else None  # packed rows: the collator's own multiple
        result = run_variant(variant, options, samples, options.padded_batch if padded else options.batch, pad_to)
        result["variant"] = name
        results.append(result)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
    if int(os.environ.get("RANK", "0")) != 0:  # one report per job
        return results
    base = results[0]["tokens_per_s"]
    print(
        f"\n{'variant':32} {'tokens/s':>10} {'ratio':>6} {'peak GiB':>9} {'MFU':>6} {'first loss':>10} "
        f"{'1st step s':>10} {'warm-up s':>9} grads"
    )
    for result in results:
        print(
            f"{result['variant']:32} {result['tokens_per_s']:10.0f} {result['tokens_per_s'] / base:6.2f} "
            f"{result['peak_gib']:9.1f} {100 * result['mfu']:5.1f}% {result['first_loss']:10.4f} "
            f"{result['first_step_s']:10.1f} {result['warmup_s']:9.1f} {'finite' if result['finite_grads'] else 'NaN'}"
        )
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))
    assert all(math.isfinite(result["tokens_per_s"]) for result in results)
    return results


if __name__ == "__main__":
    main()
