"""``python inference.py --serve --peft_model_path OUT``, run as users run it, answers the official ``openai`` client
with exactly what the model memorized: chat and completions, streamed or not, and under load (200 requests from
16 concurrent clients, each answer checked against its own prompt). The API key comes from the environment."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import MEMORIZED_RECORDS as RECORDS
from conftest import chat_answer, completion_answer, free_port, healthy, script_env
from processes import kill_all, start, wait_for

KEY = "memorized-key"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(memorized_lora_run, tmp_path_factory):
    import openai

    port = int(free_port())
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = script_env() | {"FINETUNING_API_KEY": KEY}
    process = start(
        "inference.py", "--serve", "--peft_model_path", memorized_lora_run, "--port", port, log=log, env=env
    )
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), process, timeout=180, what="a healthy server")
        assert "serving 'lora' at http://127.0.0.1:" in log.read_text()
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    finally:
        kill_all(process)


def test_models_list_names_the_adapter(client):
    assert [model.id for model in client.models.list()] == ["lora"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_with_the_instruction_returns_the_memorized_response(client, stream):
    for record in RECORDS:
        if not record["input"]:  # an instruction with an input has no single-message chat form
            assert chat_answer(client, record["instruction"], stream) == record["output"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_of_the_rendered_prompt_returns_the_memorized_response(client, stream):
    assert [completion_answer(client, record, stream) for record in RECORDS] == [r["output"] for r in RECORDS]


def test_200_requests_from_16_clients_each_get_their_own_answer(client):
    def ask(number: int) -> tuple[int, str]:
        record = RECORDS[number % len(RECORDS)]
        return number, completion_answer(client, record, stream=number % 3 == 0)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = dict(pool.map(ask, range(200)))
    assert len(answers) == 200
    wrong = {n: a for n, a in answers.items() if a != RECORDS[n % len(RECORDS)]["output"]}
    assert not wrong
