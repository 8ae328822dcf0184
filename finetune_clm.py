"""Instruction fine-tuning of causal language models (Llama, Mistral, GPT-J/NeoX, MPT, OPT, Bloom, GPT-2).

Single device (CPU, CUDA or XPU):
    python finetune_clm.py --model_name_or_path MODEL --train_file data.json --output_dir out \\
        --do_train --peft lora --dataset_concatenation --bf16 True
Several processes (one data-parallel job whichever launcher starts it):
    torchrun --nproc_per_node 2 finetune_clm.py ...
    mpirun -n 4 python finetune_clm.py ...
A YAML or JSON file can stand in for the flags (flags after it override it):
    python finetune_clm.py scripts/configs/llama_lora.yaml --learning_rate 2e-4
"""

from __future__ import annotations

import logging

from finetuning.errors import exit_on_user_error

logger = logging.getLogger("finetuning")


def main(argv: list[str] | None = None) -> dict[str, float]:
    from finetuning.cli import exit_if_help
    from finetuning.data.arguments import DataArguments
    from finetuning.model.arguments import ModelArguments, PeftArguments
    from finetuning.training.flags import COMMON_TRAINING_FLAGS, PROJECT_HELP_GROUPS

    groups = [("model", ModelArguments), ("data", DataArguments), ("method", PeftArguments), *PROJECT_HELP_GROUPS]
    exit_if_help(argv, __doc__, groups, COMMON_TRAINING_FLAGS)  # before torch and transformers load

    from finetuning.launch.environment import setup_launch_environment

    # launch environment first: an unbound CPU rank is pinned to its cores before importing torch starts OpenMP
    setup_launch_environment()

    from functools import partial

    from transformers import AutoModelForCausalLM, Trainer

    from finetuning.cli import parse_arguments
    from finetuning.data.chat import chat_only
    from finetuning.data.collator import PaddingCollator
    from finetuning.data.encoding import encode_causal_record
    from finetuning.data.preprocessing import build_split_datasets
    from finetuning.data.splits import load_splits
    from finetuning.data.templates import Rendering, get_template
    from finetuning.inference.held_out import predict_and_save
    from finetuning.model.acceleration import optimize_for_training, packed_row_lengths
    from finetuning.model.loading import added_token_ids, load_config, load_model, load_tokenizer, resolve_dtype
    from finetuning.model.packing_support import packing_block_size
    from finetuning.model.peft_setup import apply_peft, build_peft_config
    from finetuning.training.arguments import FinetuneTrainingArguments
    from finetuning.training.checks import check_run, warn_if_longer_than_model
    from finetuning.training.run import (
        evaluate_and_save,
        log_run_summary,
        prepare_trainer,
        report_run,
        resolve_resume_checkpoint,
        setup_logging,
        train_and_save,
    )

    # arguments
    arguments = parse_arguments(
        (ModelArguments, DataArguments, PeftArguments, FinetuneTrainingArguments), argv, description=__doc__
    )
    model_args, data_args, peft_args, training_args = arguments
    setup_logging(training_args)
    check_run(model_args, data_args, training_args)
    resume_from = resolve_resume_checkpoint(training_args)

    # model config & tokenizer: cheap, and enough to refuse a method the architecture cannot take
    config = load_config(model_args)
    warn_if_longer_than_model(config, data_args.max_seq_length)
    tokenizer = load_tokenizer(model_args, special_tokens=data_args.special_tokens)
    peft_config = build_peft_config(
        peft_args,
        config,
        task_type="CAUSAL_LM",
        new_token_ids=added_token_ids(tokenizer, data_args.special_tokens),
    )

    # data
    template = get_template(data_args.prompt_template)
    splits = load_splits(
        data_args,
        want_train=training_args.do_train,
        want_eval=training_args.do_eval or training_args.do_predict,
        seed=training_args.seed,
    )
    encode = partial(
        encode_causal_record,
        tokenizer=tokenizer,
        template=template,
        max_length=data_args.max_seq_length,
        train_on_inputs=data_args.train_on_inputs,
        chat_template=data_args.chat_template,
    )
    learned = splits.train or splits.validation
    rendering = Rendering(template, data_args.chat_template, chat_only(learned.records if learned else []))
    pack_block_size = packing_block_size(data_args, peft_args, config)
    train_dataset, eval_dataset = build_split_datasets(
        splits,
        encode,
        tokenizer=tokenizer,
        data_args=data_args,
        training_args=training_args,
        pack_block_size=pack_block_size,
    )

    # model & PEFT
    dtype = resolve_dtype(
        model_args.torch_dtype, bf16=training_args.bf16, fp16=training_args.fp16, frozen_base=peft_config is not None
    )
    model = load_model(
        model_args, AutoModelForCausalLM, config=config, dtype=dtype, tokenizer=tokenizer, seed=training_args.seed
    )
    model = apply_peft(model, peft_config, gradient_checkpointing=training_args.gradient_checkpointing)
    optimize_for_training(model, training_args, enabled=training_args.auto_optimize, packed=pack_block_size is not None)
    log_run_summary(model, arguments)

    # trainer -> train / save / evaluate
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=PaddingCollator(
            tokenizer.pad_token_id, lengths=packed_row_lengths(training_args, pack_block_size, model)
        ),
        processing_class=tokenizer,
    )
    prepare_trainer(trainer)  # complete checkpoints, clean stop on SIGTERM/SIGINT, no NaN training, --use_ipex
    metrics: dict[str, float] = {}
    if training_args.do_train:
        metrics |= train_and_save(
            trainer,
            arguments=arguments,
            rendering=rendering,
            resume_from=resume_from,
            train_samples=len(splits.train.records),
        )
    if training_args.do_eval:
        metrics |= evaluate_and_save(trainer, eval_samples=len(splits.validation.records))
    if training_args.do_predict:
        metrics |= predict_and_save(
            trainer,
            rendering,
            splits.validation.records,
            max_new_tokens=training_args.generation_max_length,
            num_beams=training_args.generation_num_beams,
        )
    if training_args.do_train:
        report_run(trainer, arguments, metrics)  # loss curve and model card in output_dir
    return metrics


if __name__ == "__main__":
    exit_on_user_error(main)
