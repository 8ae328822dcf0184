"""Shared fixtures: tiny models and tokenizers built offline, the repo's sample data, a script runner."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "data" / "sample_instructions.jsonl"
SHARED_DATA = REPO.parent / "shared" / "data"

sys.path.insert(0, str(REPO))


def sample_records(limit: int | None = None) -> list[dict[str, str]]:
    lines = SAMPLE_DATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:limit]]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from finetuning.model.tiny import build_tokenizer

    texts = [" ".join(record.values()) for record in sample_records()]
    return build_tokenizer(texts, vocab_size=384)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer):
    """``tiny_model("llama")`` -> path of a saved 2-layer model of that architecture (built once a session)."""
    from finetuning.model.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[str, Path] = {}

    def make(architecture: str = "llama") -> Path:
        if architecture not in built:
            built[architecture] = build_tiny_model(architecture, tiny_tokenizer, root / architecture)
        return built[architecture]

    return make


@pytest.fixture
def sample_file(tmp_path) -> Path:
    """A 24-record Alpaca JSON file from the repo's sample data."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(sample_records(24)), encoding="utf-8")
    return path


def script_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO),
    )
    return env


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch_env() -> dict[str, str]:
    """The scripts' usual environment without any launcher's variables, with a rendezvous port of its own."""
    env = {
        name: value
        for name, value in script_env().items()
        if name not in LAUNCH_VARIABLES and not name.startswith(("PMI_", "OMPI_", "MV2_", "TORCHELASTIC_"))
    }
    return env | {"MASTER_PORT": free_port()}


def run_script(
    script: str, *args: object, launcher: list[str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one of the repo's scripts as users do; returns the finished process (output captured)."""
    command = [*(launcher or [sys.executable]), str(REPO / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=script_env(), cwd=cwd or REPO)


@pytest.fixture
def run():
    return run_script


@pytest.fixture
def two_hosts():
    """(node0, node1): two network hosts on this machine (tests/netns_hosts.py), torn down after the test.

    Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
    """
    import netns_hosts

    reason = netns_hosts.unavailable()
    if reason:
        pytest.skip(reason)
    netns_hosts.remove_stale()
    with netns_hosts.two_hosts() as pair:
        yield pair


@pytest.fixture(scope="session")
def train_file(tmp_path_factory) -> Path:
    """The sample_file fixture's 24 records, once a session."""
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(sample_records(24)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def one_process(tmp_path_factory):
    """``one_process(script, *flags)`` -> output dir of a one-process run (each distinct run once a session)."""
    done: dict[tuple[str, ...], Path] = {}

    def make(script: str, *flags: object) -> Path:
        key = (script, *map(str, flags))
        if key not in done:
            output = tmp_path_factory.mktemp("one_process")
            result = run_script(script, *flags, "--output_dir", output)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            done[key] = output
        return done[key]

    return make
