"""Generate with a fine-tuned model (full, merged, or base + adapter), prompted exactly as it was trained.

See what the model learned, answer a file of prompts, chat with it, time it, or merge its adapter:
    python inference.py --peft_model_path out --infer
    python inference.py --base_model_path out --instructions "Add the two numbers." "Name a color."
    python inference.py --peft_model_path out --input_file data.jsonl --output_file predictions.jsonl
    python inference.py --peft_model_path out --interactive         # a chat-trained model: a conversation
    python inference.py --base_model_path chat-model --chat_template tokenizer --interactive
    python inference.py --peft_model_path out --bench
    python inference.py --peft_model_path out --merge_and_save merged
    python inference.py --peft_model_path out --serve --port 8000       # OpenAI-compatible HTTP server
    python inference.py --config_file inference.yaml --ray --num_replicas 2   # llm-on-ray's file, on Ray Serve
A YAML or JSON file can stand in for the flags, as for training. See docs/inference.md.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from finetuning.errors import UserError, exit_on_user_error

logger = logging.getLogger("finetuning")


def _print_answers(records: list[Any], answers: list[str]) -> None:
    for record, answer in zip(records, answers, strict=True):
        instruction = record if isinstance(record, str) else record["instruction"]
        given = "" if isinstance(record, str) or not record.get("input") else f"\nInput: {record['input']}"
        print(f"Instruction: {instruction}{given}\nResponse: {answer}\n", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import set_seed

    from finetuning.cli import parse_arguments
    from finetuning.inference import generation
    from finetuning.inference import modes as inference_modes
    from finetuning.inference.arguments import InferenceArguments
    from finetuning.inference.loading import load_for_inference
    from finetuning.inference.merging import check_merge_destination, merge_and_save
    from finetuning.inference.serve_arguments import ServeArguments, expand_config_file

    # arguments -> input records (malformed input fails before a model is loaded)
    argv = expand_config_file(list(sys.argv[1:] if argv is None else argv))
    args, serve_args = parse_arguments((InferenceArguments, ServeArguments), argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    logger.setLevel(logging.INFO)
    if not args.serve and serve_args.given():
        raise UserError(f"{', '.join(serve_args.given())}: only with --serve")
    if args.serve:  # loads the model itself (in each replica, on Ray)
        from finetuning.inference.ray_serve import serve_on_ray
        from finetuning.inference.serving import serve_with_uvicorn

        return (serve_on_ray if serve_args.ray else serve_with_uvicorn)(args, serve_args)
    pairs = inference_modes.read_prompt_records(args.input_file) if args.input_file else None

    # model (+ adapter) -> merged model; a bad destination is refused before the model loads
    if args.merge_and_save:
        check_merge_destination(args.merge_and_save, args.base_model_path, args.peft_model_path)
    loaded = load_for_inference(args)
    report: dict[str, Any] = {}
    if args.merge_and_save:
        report["merged"] = str(merge_and_save(loaded, args.merge_and_save))
        print(f"merged model saved to {report['merged']}", flush=True)

    # generation modes
    config = generation.build_generation_config(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        num_beams=args.num_beams,
        chat_template=loaded.rendering.chat_template,
    )
    generator = generation.Generator(loaded.model, loaded.tokenizer, config, loaded.rendering)
    set_seed(args.seed)
    for wanted, records in ((args.infer, list(generation.SAMPLE_INSTRUCTIONS)), (args.instructions, args.instructions)):
        if wanted:
            answers = generator.generate(records, batch_size=args.batch_size)
            _print_answers(records, answers)
            report.setdefault("answers", []).extend(answers)
    if pairs is not None:
        result = inference_modes.predict_file(generator, pairs, args.output_file, args.batch_size)
        print(result.format(args.output_file), flush=True)
        report["predictions"], report["scores"] = result.records, result.scores
    if args.bench:
        bench = inference_modes.bench(generator, list(generation.SAMPLE_INSTRUCTIONS), runs=args.bench_runs)
        print(bench.format(), flush=True)
        report["first_token_latency_s"], report["tokens_per_s"] = bench.first_token_latency, bench.tokens_per_second
    if args.interactive:
        from finetuning.inference.interactive import interactive

        report["interactive_answers"] = interactive(generator, sys.stdin, sys.stdout)
    return report


if __name__ == "__main__":
    try:
        exit_on_user_error(main)
    except KeyboardInterrupt:  # Ctrl-C while loading or answering a file: no traceback (nothing half-written)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
