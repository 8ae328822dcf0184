"""``inference.py --serve``: load the run, put a batching engine on it, and serve the app with uvicorn.

:func:`build_engine` is the one place that turns the flags into a serving engine: the uvicorn process and each
Ray Serve replica (:mod:`~finetuning.inference.ray_serve`) call it, so both serve the same model, prompted the
same way, with the same defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetuning.data.templates import Rendering
from finetuning.inference.arguments import InferenceArguments
from finetuning.inference.batching import BatchingEngine
from finetuning.inference.serve_arguments import ServeArguments
from finetuning.inference.server import ServerSettings

logger = logging.getLogger("finetuning")


def served_name(args: InferenceArguments, serve_args: ServeArguments) -> str:
    if serve_args.served_model_name:
        return serve_args.served_model_name
    path = args.peft_model_path or args.base_model_path
    assert path is not None
    return Path(path).name or str(path)


def build_engine(args: InferenceArguments, serve_args: ServeArguments) -> tuple[BatchingEngine, ServerSettings]:
    """Load the model the flags name and start its batching engine; the app's settings come with it."""
    from finetuning.inference import generation
    from finetuning.inference.loading import load_for_inference

    loaded = load_for_inference(args)
    rendering = loaded.rendering
    prompt_format = serve_args.prompt_template()
    if prompt_format is not None:  # llm-on-ray's prompt layout replaces the saved instruction template
        rendering = Rendering(prompt_format, rendering.chat_template, chat=False)
    config = generation.build_generation_config(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
        chat_template=rendering.chat_template,
    )
    generator = generation.Generator(loaded.model, loaded.tokenizer, config, rendering)
    engine = BatchingEngine(generator, max_batch_size=serve_args.max_batch_size, batch_wait_ms=serve_args.batch_wait_ms)
    settings = ServerSettings(
        model_name=served_name(args, serve_args),
        api_key=serve_args.api_key,
        max_body_bytes=serve_args.max_body_bytes,
        route_prefix="" if serve_args.ray else serve_args.route_prefix,  # Ray Serve routes the prefix itself
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_p=1.0 if args.top_p is None else args.top_p,
        top_k=50 if args.top_k is None and args.do_sample else args.top_k or 0,
        stop_words=tuple(serve_args.stop_words or ()),
    )
    return engine, settings


def serve_with_uvicorn(args: InferenceArguments, serve_args: ServeArguments) -> dict[str, Any]:
    """Serve until interrupted (Ctrl-C, SIGTERM); returns what was served, for the entry script's report."""
    import uvicorn

    from finetuning.inference.server import build_app

    engine, settings = build_engine(args, serve_args)
    app = build_app(engine, settings)
    url = f"http://{serve_args.host}:{serve_args.port}{settings.route_prefix}/v1"
    server = uvicorn.Server(uvicorn.Config(app, host=serve_args.host, port=serve_args.port, log_level="warning"))
    print(f"serving '{settings.model_name}' at {url} (OpenAI-compatible; Ctrl-C stops)", flush=True)
    try:
        server.run()
    finally:
        engine.close()
    return {"served": settings.model_name, "url": url}
