"""The OpenAI-compatible server in-process on a tiny random llama: routes, every refused request, the API key,
per-request decoding (seed, n, stop, max_tokens, usage), and a stream whose client goes away.

The server listens on 127.0.0.1 on a free port; requests come from the official ``openai`` client, or from
``http.client`` where a client library would not send them (malformed JSON, a body of several MB).
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
from conftest import free_port

KEY = "test-key"


@pytest.fixture(scope="module")
def server(tiny_model):
    import uvicorn

    from finetuning.inference.arguments import InferenceArguments
    from finetuning.inference.serve_arguments import ServeArguments
    from finetuning.inference.server import build_app
    from finetuning.inference.serving import build_engine

    args = InferenceArguments(base_model_path=str(tiny_model("llama")), serve=True, max_new_tokens=16)
    serve_args = ServeArguments(port=int(free_port()), api_key=KEY, max_body_bytes=100_000, served_model_name="tiny")
    engine, settings = build_engine(args, serve_args)
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(build_app(engine, settings), host="127.0.0.1", port=serve_args.port, log_level="warning")
    )
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield engine, serve_args.port
    uvicorn_server.should_exit = True
    thread.join(timeout=30)
    engine.close()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{server[1]}/v1", api_key=KEY, max_retries=0)


def post(port: int, path: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


GOOD = {"model": "tiny", "prompt": "Name a color.", "max_tokens": 4}
BAD_REQUESTS = {
    "malformed JSON": ("/v1/completions", b'{"model": "tiny", "prompt": ', 400, None),
    "not an object": ("/v1/completions", b"[1, 2]", 400, None),
    "unknown model": ("/v1/completions", {**GOOD, "model": "gpt-9"}, 404, "model"),
    "missing messages": ("/v1/chat/completions", {"model": "tiny"}, 400, "messages"),
    "empty messages": ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    "missing prompt": ("/v1/completions", {"model": "tiny"}, 400, "prompt"),
    "max_tokens 0": ("/v1/completions", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens -3": ("/v1/completions", {**GOOD, "max_tokens": -3}, 400, "max_tokens"),
    "max_tokens past the context": ("/v1/completions", {**GOOD, "max_tokens": 1020}, 400, "max_tokens"),
    "prompt past the context": ("/v1/completions", {**GOOD, "prompt": "word " * 1100}, 400, None),
    "unknown field": ("/v1/completions", {**GOOD, "frobnicate": 1}, 400, "frobnicate"),
    "max_tokens a string": ("/v1/completions", {**GOOD, "max_tokens": "many"}, 400, "max_tokens"),
    "temperature a string": ("/v1/completions", {**GOOD, "temperature": "hot"}, 400, "temperature"),
    "stop a number": ("/v1/completions", {**GOOD, "stop": 7}, 400, "stop"),
    "n a float": ("/v1/completions", {**GOOD, "n": 1.5}, 400, "n"),
    "stream a string": ("/v1/completions", {**GOOD, "stream": "yes"}, 400, "stream"),
    "message without role": ("/v1/chat/completions", {"model": "tiny", "messages": [{"content": "hi"}]}, 400, None),
    "two user turns to an instruction model": (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        400,
        "messages",
    ),
    "a body of several MB": ("/v1/completions", {**GOOD, "prompt": "x" * 3_000_000}, 413, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_an_openai_error_and_the_server_keeps_serving(server, case):
    _, port = server
    path, body, status, param = BAD_REQUESTS[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, payload = post(port, path, raw)
    assert got == status, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param or param is None
    got, payload = post(port, "/v1/completions", json.dumps(GOOD).encode())
    assert got == 200 and payload["choices"][0]["finish_reason"] == "length"


def test_api_key_is_required_on_v1_routes(server):
    import openai

    _, port = server
    assert post(port, "/v1/completions", json.dumps(GOOD).encode(), key=None)[0] == 401
    status, payload = post(port, "/v1/completions", json.dumps(GOOD).encode(), key="wrong")
    assert status == 401 and payload["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert post(port, "/v1/completions", json.dumps(GOOD).encode())[0] == 200


def test_models_and_health(client, server):
    assert [model.id for model in client.models.list()] == ["tiny"]
    connection = http.client.HTTPConnection("127.0.0.1", server[1], timeout=30)
    connection.request("GET", "/health")
    assert json.loads(connection.getresponse().read())["status"] == "ok"


def test_stream_pieces_add_up_to_the_answer_and_usage_counts_tokens(client):
    answer = client.completions.create(model="tiny", prompt="Name a color.", max_tokens=12)
    assert answer.usage.completion_tokens == 12 and answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens > 0
    stream = client.completions.create(
        model="tiny", prompt="Name a color.", max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == answer.choices[0].text
    assert chunks[-1].usage.completion_tokens == 12


def test_stop_string_cuts_the_answer(client):
    full = client.completions.create(model="tiny", prompt="Tell me about alpacas.", max_tokens=16).choices[0].text
    stop = full[5:8]
    assert stop and full.find(stop) >= 1
    cut = client.completions.create(model="tiny", prompt="Tell me about alpacas.", max_tokens=16, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny", prompt="Tell me about alpacas.", max_tokens=16, stop=stop, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == full[: full.find(stop)]


def test_seeded_sampling_repeats_whatever_shares_its_batch(client):
    def sample(seed: int) -> list[str]:
        answer = client.completions.create(
            model="tiny", prompt="Name a color.", max_tokens=10, temperature=1.5, seed=seed, n=3
        )
        return [choice.text for choice in sorted(answer.choices, key=lambda choice: choice.index)]

    first = sample(7)
    assert len(set(first)) > 1  # n answers drawn with different generators
    threads = [threading.Thread(target=sample, args=(seed,)) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    again = sample(7)  # batched with the others this time (or not): the same draws
    for thread in threads:
        thread.join()
    assert again == first


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    engine, port = server
    before = engine.generator.generated_tokens
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {**GOOD, "max_tokens": 1000, "stream": True, "stop": None}
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # generation has started
    connection.sock.shutdown(2)
    connection.close()
    deadline = time.monotonic() + 120
    while engine.running or engine.queued:
        assert time.monotonic() < deadline, "the abandoned stream is still being generated"
        time.sleep(0.05)
    assert engine.generator.generated_tokens - before < 1000
