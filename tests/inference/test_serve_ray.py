"""``inference.py --config_file inference.yaml --ray``: llm-on-ray's config file deploys the memorized adapter on a
local Ray Serve (one replica, every Ray port on 127.0.0.1); the official ``openai`` client gets the memorized
answers through the route prefix, and SIGTERM shuts Serve and Ray down, leaving no process behind."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import MEMORIZED_RECORDS as RECORDS
from conftest import chat_answer, completion_answer, free_port, healthy, script_env
from processes import alive, children, kill_all, start, wait_for

pytestmark = pytest.mark.slow


def test_ray_serve_deployment_answers_then_shuts_down(memorized_lora_run, tmp_path):
    import openai

    pytest.importorskip("ray.serve")
    port = int(free_port())
    config = tmp_path / "inference.yaml"
    config.write_text(
        f"port: {port}\nname: tuned\nroute_prefix: /custom-model\nnum_replicas: 1\n"
        f"model_description:\n  peft_model_id_or_path: {memorized_lora_run}\n  tokenizer_name_or_path: null\n",
        encoding="utf-8",
    )
    log = tmp_path / "ray.log"
    env = {name: value for name, value in script_env().items() if name != "RAY_ADDRESS"}  # a local Ray
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    process = start("inference.py", "--config_file", config, "--ray", log=log, env=env)
    try:
        route = f"http://127.0.0.1:{port}/custom-model"
        wait_for(lambda: healthy(route), process, timeout=420, what="a healthy Ray Serve route")
        client = openai.OpenAI(base_url=f"{route}/v1", api_key="none", max_retries=0)
        assert [model.id for model in client.models.list()] == ["tuned"]
        for record in RECORDS:
            assert completion_answer(client, record, stream=True, model="tuned") == record["output"]
        assert chat_answer(client, RECORDS[0]["instruction"], stream=False, model="tuned") == RECORDS[0]["output"]
        ray_processes = children(process.pid)
        assert ray_processes  # the local Ray's processes
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=240) == 0, log.read_text()[-3000:]
        assert "Ray Serve shut down" in log.read_text()
        deadline = time.monotonic() + 120  # Ray's processes exit on their own after the shutdown: give them time
        while [pid for pid in ray_processes if alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in ray_processes if alive(pid)]
    finally:
        if process.poll() is None:
            kill_all(process)
