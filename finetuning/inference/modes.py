"""What ``inference.py`` does with a :class:`~finetuning.inference.generation.Generator`: answer a file of prompts,
or time generation (chatting on stdin is :mod:`finetuning.inference.interactive`).

Prompt files are any training-format file; output lines are the input records plus a ``prediction`` field,
written atomically so an interrupted run never leaves a half file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuning.data.records import Record, normalize_record
from finetuning.errors import UserError
from finetuning.inference.generation import Generator


class TimingStreamer:
    """A streamer that records when each new token arrives (the first ``put`` is the prompt, not output)."""

    def __init__(self) -> None:
        self.token_times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.token_times.append(time.perf_counter())

    def end(self) -> None:
        pass


def read_prompt_records(path: str) -> list[tuple[dict[str, Any], Record]]:
    """(raw record, normalized record) for every record of a training-format file, in file order.

    Unlike training, a prompt file need not hold answers: a missing output/response field or a conversation
    that ends with the user's turn is fine. Records with empty fields are kept, so that output line N always
    answers input record N. Malformed records raise the training loader's one-line errors.
    """
    from finetuning.data.records import iter_raw_records

    file_path = Path(path)
    if file_path.is_dir():
        raise UserError("is a directory, not a data file", path=path, field="input_file")
    if not file_path.is_file():
        raise UserError("no such file", path=path, field="input_file")
    pairs = []
    for where, raw in iter_raw_records(file_path):
        pairs.append((raw, _normalize_prompt(raw, where)))
    if not pairs:
        raise UserError("no records", path=path, field="input_file")
    return pairs


def _normalize_prompt(raw: Any, where: dict[str, Any]) -> Record:
    if not isinstance(raw, dict):
        return normalize_record(raw, where)  # raises the one-line error
    if "messages" in raw:
        messages = raw["messages"]
        if (
            isinstance(messages, list)
            and messages
            and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
        ):
            record = normalize_record({"messages": [*messages, {"role": "assistant", "content": ""}]}, where)
            return {"messages": record["messages"][:-1]}
        return normalize_record(raw, where)
    if not any(key in raw for key in ("output", "response")):
        return normalize_record({**raw, "output": ""}, where)
    return normalize_record(raw, where)


def write_jsonl_atomically(path: str, rows: Iterable[dict[str, Any]]) -> None:
    """Write JSON Lines to a temporary file beside ``path`` and rename it into place: a crash or an
    interrupt never leaves a half-written file that looks complete."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    ) as handle:
        temporary = Path(handle.name)
        try:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, target)


def reference_answer(record: Record) -> str | None:
    """The answer a record holds (its output/response, or a final assistant turn), or None."""
    if "messages" in record:
        last = record["messages"][-1] if record["messages"] else {}
        return last.get("content") if last.get("role") == "assistant" else None
    return record.get("output") or None


@dataclass
class FileResult:
    records: int
    seconds: float
    new_tokens: int
    empty: int  # answers with no text: a model that stops at once
    scored: int  # records that held a reference answer
    scores: dict[str, float]  # exact match and ROUGE over those (finetuning/data/scoring.py)

    def format(self, output_file: str) -> str:
        rate = self.new_tokens / self.seconds if self.seconds else 0.0
        lines = [
            f"wrote {self.records} predictions to {output_file} ({self.seconds:.1f} s, {rate:.1f} new tokens/s, "
            f"{self.new_tokens / max(self.records, 1):.1f} new tokens per answer, {self.empty} empty)"
        ]
        if self.scored:
            scores = ", ".join(f"{name} {value:.2f}" for name, value in self.scores.items())
            lines.append(f"against the {self.scored} answers in the file: {scores}")
        return "\n".join(lines)


def predict_file(
    generator: Generator, pairs: list[tuple[dict[str, Any], Record]], output_file: str, batch_size: int
) -> FileResult:
    """Answer every record, with a progress bar on a terminal; the output holds each input record plus its
    ``prediction``. Records that hold an answer are scored against it."""
    import sys

    from tqdm.auto import tqdm

    from finetuning.data.scoring import score_answers

    start, tokens_before = time.perf_counter(), generator.generated_tokens
    with tqdm(total=len(pairs), desc="answering", unit="prompt", file=sys.stderr, disable=None) as bar:
        predictions = generator.generate([record for _, record in pairs], batch_size=batch_size, on_batch=bar.update)
    seconds = time.perf_counter() - start
    answered = list(zip(pairs, predictions, strict=True))
    write_jsonl_atomically(output_file, ({**raw, "prediction": prediction} for (raw, _), prediction in answered))
    references = [(prediction, reference_answer(record)) for (_, record), prediction in answered]
    scored = [(prediction, reference) for prediction, reference in references if reference is not None]
    return FileResult(
        records=len(answered),
        seconds=seconds,
        new_tokens=generator.generated_tokens - tokens_before,
        empty=sum(not prediction.strip() for prediction in predictions),
        scored=len(scored),
        scores=score_answers([p for p, _ in scored], [r for _, r in scored]),
    )


@dataclass
class BenchResult:
    runs: int
    prompts: int
    new_tokens: int
    seconds: float
    first_token_latencies: list[float]

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def first_token_latency(self) -> float:
        """Median time to the first token, in seconds."""
        ordered = sorted(self.first_token_latencies)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def format(self) -> str:
        latencies = self.first_token_latencies
        return (
            f"first-token latency: {1000 * self.first_token_latency:.1f} ms median "
            f"(min {1000 * min(latencies):.1f}, max {1000 * max(latencies):.1f}) over {len(latencies)} generations\n"
            f"throughput: {self.tokens_per_second:.1f} new tokens/s ({self.new_tokens} tokens in "
            f"{self.seconds:.2f} s, batch size 1, {self.runs} runs of {self.prompts} prompts)"
        )


def bench(generator: Generator, records: list[Record | str], runs: int = 3) -> BenchResult:
    """Warm up, then time ``runs`` passes over ``records`` one prompt at a time.

    The first-token latency is the time from the call to the first new token (read off a streamer; beam
    search, which cannot stream, measures it with a one-token run); throughput is new tokens over the time
    of the whole generations.
    """
    import torch

    def synchronize() -> None:
        if generator.device.type == "cuda":
            torch.cuda.synchronize()
        elif generator.device.type == "xpu":
            torch.xpu.synchronize()

    prompts = [generator.prompt_ids(record) for record in records]
    generator.generate_ids([prompts[0]])  # warm-up: allocator, kernels, caches
    synchronize()
    streamed = generator.generation_config.num_beams == 1
    latencies: list[float] = []
    new_tokens, seconds = 0, 0.0
    for _ in range(runs):
        for ids in prompts:
            if not streamed:
                start = time.perf_counter()
                generator.generate_ids([ids], max_new_tokens=1)
                synchronize()
                latencies.append(time.perf_counter() - start)
            streamer = TimingStreamer() if streamed else None
            start = time.perf_counter()
            new = generator.generate_ids([ids], streamer=streamer)[0]
            synchronize()
            seconds += time.perf_counter() - start
            # tokens the model produced, the stop token included: it cost a forward pass like any other
            new_tokens += len(streamer.token_times) if streamer is not None else len(new)
            if streamer is not None and streamer.token_times:
                latencies.append(streamer.token_times[0] - start)
    return BenchResult(
        runs=runs,
        prompts=len(prompts),
        new_tokens=new_tokens,
        seconds=seconds,
        first_token_latencies=latencies or [0.0],
    )
