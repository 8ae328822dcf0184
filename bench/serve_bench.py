"""Serving throughput: the OpenAI-compatible server at 1, 8 and 32 concurrent clients against one-by-one generation.

The same model answers the same prompts twice: first one request at a time through the suite's ``Generator``
(what ``inference.py --input_file --batch_size 1`` does), then through ``inference.py --serve``'s app (dynamic
batching) started in this process on 127.0.0.1, with C client threads (in a process of their own) each sending
streamed completions back to back. Printed per row: requests/s, new tokens/s, median time to first token, and
tokens/s as a ratio to one by one.
Clients use only the standard library, so the machine needs torch, transformers, peft, fastapi and uvicorn (no
``datasets``, no Ray, no ``openai``).

GPU (the issue's setting: a 1B-class random Llama, 128-token prompts, 128 new tokens):
    python bench/serve_bench.py --preset llama1b --device cuda
CPU smoke:  python bench/serve_bench.py --preset tiny --device cpu --new_tokens 16 --concurrency 1 4 --requests 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ensure_model(preset: str, directory: Path) -> Path:
    """A saved random-weight model of ``preset`` (bench/save_random_model.py), built once."""
    if (directory / "config.json").is_file():
        return directory
    from save_random_model import main as save_random_model

    from finetuning.model.tiny import build_tokenizer

    texts = (REPO / "data" / "sample_instructions.jsonl").read_text(encoding="utf-8").splitlines()
    tokenizer_dir = directory.parent / f"{directory.name}-tokenizer"
    build_tokenizer(texts, vocab_size=512 if preset == "tiny" else 4096).save_pretrained(tokenizer_dir)
    return save_random_model(["--preset", preset, "--tokenizer", str(tokenizer_dir), "--out", str(directory)])


def make_prompts(generator: Any, count: int, length: int, seed: int = 0) -> list[str]:
    """``count`` texts of ``length`` tokens (as the server tokenizes them) drawn from the vocabulary at random."""
    tokenizer, rng = generator.tokenizer, random.Random(seed)
    special = set(tokenizer.all_special_ids)
    pool = [token for token in range(len(tokenizer)) if token not in special]
    prompts = []
    for _ in range(count):
        text = tokenizer.decode([rng.choice(pool) for _ in range(length)])
        for _ in range(5):  # re-tokenizing decoded text merges a few tokens: pad back to the length
            ids = generator.text_prompt_ids(text)
            if len(ids) == length:
                break
            text = tokenizer.decode(ids[-length:] + [rng.choice(pool) for _ in range(length - len(ids))])
        prompts.append(text)
    return prompts


def one_by_one(generator: Any, prompts: list[str], new_tokens: int, sync: Any) -> dict[str, float]:
    from finetuning.inference.modes import TimingStreamer

    generator.generate_ids([generator.text_prompt_ids(prompts[0])], max_new_tokens=new_tokens)  # warm-up
    tokens, first, start = 0, [], time.perf_counter()
    for text in prompts:
        streamer, began = TimingStreamer(), time.perf_counter()
        generator.generate_ids([generator.text_prompt_ids(text)], streamer=streamer, max_new_tokens=new_tokens)
        sync()
        tokens += len(streamer.token_times)
        first.append(streamer.token_times[0] - began)
    seconds = time.perf_counter() - start
    return {"clients": 0, "requests": len(prompts), "seconds": seconds, "tokens": tokens, "ttft": first}


def stream_one(port: int, prompt: str, new_tokens: int) -> tuple[float, int]:
    """(seconds to the first text, completion tokens) of one streamed completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    began, first, tokens = time.perf_counter(), None, 0
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
            first = time.perf_counter() - began
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    connection.close()
    return (first if first is not None else time.perf_counter() - began), tokens


def served(port: int, prompts: list[str], clients: int, new_tokens: int) -> dict[str, Any]:
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client(mine: list[str]) -> None:
        for prompt in mine:
            result = stream_one(port, prompt, new_tokens)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client, args=(prompts[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    tokens = sum(count for _, count in results)
    return {"clients": clients, "requests": len(results), "seconds": seconds, "tokens": tokens,
            "ttft": [first for first, _ in results]}  # fmt: skip


def start_server(model: Path, device: str, dtype: str | None, batch: int) -> tuple[Any, int, Any]:
    import uvicorn

    from finetuning.inference.arguments import InferenceArguments
    from finetuning.inference.serve_arguments import ServeArguments
    from finetuning.inference.server import build_app
    from finetuning.inference.serving import build_engine

    args = InferenceArguments(base_model_path=str(model), serve=True, device=device, dtype=dtype)
    serve_args = ServeArguments(port=1, served_model_name="bench", max_batch_size=batch)
    engine, settings = build_engine(args, serve_args)
    config = uvicorn.Config(build_app(engine, settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return engine, port, server


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama1b", help="bench/train_throughput.py preset of the random model")
    parser.add_argument("--model", type=Path, help="model dir, made if missing (default .bench/models/serve-PRESET)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--prompt_tokens", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--baseline_requests", type=int, default=8, help="requests generated one by one")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    options = parser.parse_args(argv)
    model = ensure_model(options.preset, options.model or REPO / ".bench" / "models" / f"serve-{options.preset}")
    engine, port, server = start_server(model, options.device, options.dtype, max(options.concurrency))
    sync = torch.cuda.synchronize if options.device == "cuda" else (lambda: None)
    prompts = make_prompts(engine.generator, max(options.requests, options.baseline_requests), options.prompt_tokens)
    lengths = [len(engine.generator.text_prompt_ids(text)) for text in prompts]
    print(f"model {model} on {options.device}; prompts {min(lengths)}-{max(lengths)} tokens, {options.new_tokens} new")
    rows = [one_by_one(engine.generator, prompts[: options.baseline_requests], options.new_tokens, sync)]
    stream_one(port, prompts[0], options.new_tokens)  # warm-up through the server
    # the clients run in a process of their own, so that parsing their streams does not take the server's GIL
    with multiprocessing.get_context("spawn").Pool(1) as clients:
        for count in options.concurrency:
            rows.append(clients.apply(served, (port, prompts[: options.requests], count, options.new_tokens)))
    base = rows[0]["tokens"] / rows[0]["seconds"]
    print(f"{'clients':>12} {'requests':>8} {'req/s':>8} {'tokens/s':>9} {'TTFT p50 ms':>12} {'ratio':>6}")
    for row in rows:
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["requests_per_s"] = row["requests"] / row["seconds"]
        row["ttft_p50_ms"] = 1000 * statistics.median(row.pop("ttft"))
        row["ratio"] = row["tokens_per_s"] / base
        name = "one by one" if row["clients"] == 0 else str(row["clients"])
        print(
            f"{name:>12} {row['requests']:>8} {row['requests_per_s']:>8.2f} {row['tokens_per_s']:>9.1f} "
            f"{row['ttft_p50_ms']:>12.1f} {row['ratio']:>5.2f}x",
            flush=True,
        )
    server.should_exit = True
    engine.close()
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
