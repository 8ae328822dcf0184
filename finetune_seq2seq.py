"""Instruction fine-tuning of encoder-decoder models (T5, Flan-T5, BART): prompt in, response out.

Single device (CPU, CUDA or XPU):
    python finetune_seq2seq.py --model_name_or_path google/flan-t5-xl --train_file data.json --output_dir out \\
        --do_train --peft lora --bf16 True
Evaluation with ROUGE on generated text:
    python finetune_seq2seq.py ... --do_eval --predict_with_generate --generation_num_beams 4
Several processes (one data-parallel job whichever launcher starts it):
    python -m torch.distributed.launch --nproc_per_node 2 finetune_seq2seq.py ...
    torchrun --nproc_per_node 2 finetune_seq2seq.py ...
    mpirun -n 4 python finetune_seq2seq.py ... --no_cuda --xpu_backend ccl
A YAML or JSON file can stand in for the flags (flags after it override it):
    python finetune_seq2seq.py scripts/configs/flan_t5_lora.yaml --model_name_or_path ... --output_dir out
"""

from __future__ import annotations

import logging

from finetuning.errors import exit_on_user_error

logger = logging.getLogger("finetuning")


def main(argv: list[str] | None = None) -> dict[str, float]:
    from finetuning.cli import exit_if_help
    from finetuning.data.arguments import Seq2SeqDataArguments
    from finetuning.model.arguments import ModelArguments, Seq2SeqPeftArguments
    from finetuning.training.flags import COMMON_TRAINING_FLAGS, PROJECT_HELP_GROUPS

    groups = [
        ("model", ModelArguments),
        ("data", Seq2SeqDataArguments),
        ("method", Seq2SeqPeftArguments),
        *PROJECT_HELP_GROUPS,
    ]
    exit_if_help(argv, __doc__, groups, COMMON_TRAINING_FLAGS)  # before torch and transformers load

    from finetuning.launch.environment import setup_launch_environment

    # launch environment first: an unbound CPU rank is pinned to its cores before importing torch starts OpenMP
    setup_launch_environment()

    from functools import partial

    from transformers import AutoModelForSeq2SeqLM

    from finetuning.cli import parse_arguments
    from finetuning.data.preprocessing import build_split_datasets
    from finetuning.data.seq2seq import Seq2SeqPaddingCollator, encode_seq2seq_record
    from finetuning.data.splits import load_splits
    from finetuning.data.templates import Rendering, get_template
    from finetuning.inference.held_out import predict_and_save
    from finetuning.model.acceleration import optimize_for_training
    from finetuning.model.loading import added_token_ids, load_config, load_model, load_tokenizer, resolve_dtype
    from finetuning.model.peft_setup import apply_peft, build_peft_config
    from finetuning.training.arguments import Seq2SeqFinetuneTrainingArguments
    from finetuning.training.checks import check_run
    from finetuning.training.run import (
        evaluate_and_save,
        log_run_summary,
        prepare_trainer,
        report_run,
        resolve_resume_checkpoint,
        setup_logging,
        train_and_save,
    )
    from finetuning.training.seq2seq import (
        RougeMetrics,
        decoder_start_token_id,
        require_instruction_records,
        seq2seq_trainer_class,
        settle_seq2seq_arguments,
        token_count_loss,
    )

    # arguments
    arguments = parse_arguments(
        (ModelArguments, Seq2SeqDataArguments, Seq2SeqPeftArguments, Seq2SeqFinetuneTrainingArguments),
        argv,
        description=__doc__,
    )
    model_args, data_args, peft_args, training_args = arguments
    setup_logging(training_args)
    check_run(model_args, data_args, training_args)
    resume_from = resolve_resume_checkpoint(training_args)

    # model config & tokenizer: cheap, and enough to refuse a model or method that cannot work
    config = load_config(model_args)
    settle_seq2seq_arguments(config, data_args, training_args)
    tokenizer = load_tokenizer(model_args, special_tokens=data_args.special_tokens)
    peft_config = build_peft_config(
        peft_args,
        config,
        task_type="SEQ_2_SEQ_LM",
        new_token_ids=added_token_ids(tokenizer, data_args.special_tokens),
    )

    # data: the prompt is the encoder input, the response the decoder target; never packed
    template = get_template(data_args.prompt_template)
    splits = load_splits(
        data_args,
        want_train=training_args.do_train,
        want_eval=training_args.do_eval or training_args.do_predict,
        seed=training_args.seed,
    )
    require_instruction_records(splits)
    rendering = Rendering(template)
    encode = partial(
        encode_seq2seq_record,
        tokenizer=tokenizer,
        template=template,
        max_source_length=data_args.max_source_length,
        max_target_length=data_args.max_target_length,
    )
    train_dataset, eval_dataset = build_split_datasets(
        splits,
        encode,
        tokenizer=tokenizer,
        data_args=data_args,
        training_args=training_args,
        pack_block_size=None,
        settings={"encoding": "seq2seq"},
    )

    # model & PEFT
    dtype = resolve_dtype(
        model_args.torch_dtype, bf16=training_args.bf16, fp16=training_args.fp16, frozen_base=peft_config is not None
    )
    model = load_model(
        model_args, AutoModelForSeq2SeqLM, config=config, dtype=dtype, tokenizer=tokenizer, seed=training_args.seed
    )
    loss = token_count_loss(model)
    model = apply_peft(model, peft_config, gradient_checkpointing=training_args.gradient_checkpointing)
    optimize_for_training(model, training_args, enabled=training_args.auto_optimize)
    log_run_summary(model, arguments)

    # trainer -> train / save / evaluate; without generation only the loss is computed, so no logits are kept
    trainer = seq2seq_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=Seq2SeqPaddingCollator(tokenizer.pad_token_id, decoder_start_token_id(model)),
        compute_loss_func=loss,
        processing_class=tokenizer,
        compute_metrics=RougeMetrics(tokenizer) if training_args.predict_with_generate else None,
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
    if training_args.do_predict:  # generation_max_length counts the decoder start token
        metrics |= predict_and_save(
            trainer,
            rendering,
            splits.validation.records,
            max_new_tokens=training_args.generation_max_length - 1,
            num_beams=training_args.generation_num_beams,
        )
    if training_args.do_train:
        report_run(trainer, arguments, metrics)  # loss curve and model card in output_dir
    return metrics


if __name__ == "__main__":
    exit_on_user_error(main)
