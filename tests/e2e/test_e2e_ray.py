"""scripts/ray_finetune.py end to end: the issue's llm-on-ray YAML (paths changed to a tiny model and data) on Ray.

2 Ray Train workers x 1 CPU run finetune_clm.py as one gloo job. The reference is one finetune_clm.py process
with the same global batch and the flags the YAML maps to (float32, LoRA dropout 0, data in file order, as in
test_e2e_distributed.py): the adapters must agree to 1e-5 and the Ray run must take half the steps of one process
with the same per-device batch. Then a worker killed mid-run under --max_failures 1, and a run against an already
started `ray start --head`. Ray listens on 127.0.0.1 only (the script pins it; the cluster is started so).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port, launch_env
from processes import children, environment_of, kill_all, start, wait_for
from runs import adapter_difference, trainer_state

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


# After the YAML, on the command line after `--`: deterministic float32 runs, short enough for CI, and all 24
# samples trained (no 5% held out): with a count the global batch does not divide, DDP repeats samples to even
# up the ranks' last batches, and one process would not.
OVERRIDES = (
    "--do_eval",
    "false",
    "--bf16",
    "false",
    "--lora_dropout",
    "0",
    "--seed",
    "7",
    "--learning_rate",
    "1e-2",
    "--num_train_epochs",
    "1",
    "--logging_steps",
    "1",
    "--train_sampling_strategy",
    "sequential",
    "--dataset_concatenation",
    "false",
    "--max_seq_length",
    "128",
)
FLOAT32_TOLERANCE = 1e-5
RAY_BIN = Path(sys.executable).parent / "ray"


def ray_env() -> dict[str, str]:
    env = launch_env()
    del env["MASTER_PORT"]  # each worker's child gets its own
    return env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model) -> Path:
    """The issue's YAML with its model, data and output paths pointing at a tiny model and 24 Dolly records."""
    from conftest import sample_records

    root = tmp_path_factory.mktemp("ray")
    with (root / "dolly.jsonl").open("w") as out:
        for record in sample_records(24):
            row = {"instruction": record["instruction"], "context": record["input"], "response": record["output"]}
            out.write(json.dumps(row) + "\n")
    text = (REPO / "tests" / "fixtures" / "llm_on_ray" / "finetune.yaml").read_text()
    text = text.replace("EleutherAI/gpt-j-6b", str(tiny_model("llama")))
    text = text.replace("examples/data/sample_finetune_data_small.jsonl", str(root / "dolly.jsonl"))
    (root / "finetune.yaml").write_text(text)
    return root


def yaml_for(workdir: Path, output: Path) -> Path:
    path = output.parent / f"{output.name}.yaml"
    path.write_text((workdir / "finetune.yaml").read_text().replace("/tmp/llm-ray/output", str(output)))
    return path


@pytest.fixture(scope="module")
def reference(workdir, warm_run) -> Path:
    """One finetune_clm.py process, the YAML's mapped flags, the global batch of 2 workers x 2."""
    from finetuning.launch.ray_arguments import RayArguments
    from finetuning.launch.ray_train import build_plan

    output = workdir / "single_batch4"
    plan = build_plan(RayArguments(config_file=str(yaml_for(workdir, output))), list(OVERRIDES))
    assert_ok(warm_run("finetune_clm.py", *plan.flags, "--per_device_train_batch_size", "4"))
    return output


def ray_finetune(
    config: Path, *flags: object, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(REPO / "scripts" / "ray_finetune.py"),
        "--config_file",
        str(config),
        *map(str, flags),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or ray_env(), cwd=cwd)


def assert_matches(output: Path, reference: Path) -> None:
    samples = json.loads((output / "train_results.json").read_text())["train_samples"]
    steps = trainer_state(output)["global_step"]
    assert steps == trainer_state(reference)["global_step"] == math.ceil(samples / 4)
    assert 2 * steps == math.ceil(samples / 2)  # one process with the per-device batch takes twice the steps
    difference = adapter_difference(output, reference)
    print(f"adapter max-abs difference to one process with the global batch: {difference:.3g}")
    assert difference <= FLOAT32_TOLERANCE
    assert sorted(path.name for path in output.iterdir()) == sorted(path.name for path in reference.iterdir())


def test_the_issues_yaml_on_a_local_ray_trains_like_one_process_with_the_global_batch(workdir, reference, tmp_path):
    output = tmp_path / "out"
    # A relative train_file means what it means where the command runs (Ray's workers run elsewhere).
    config = yaml_for(workdir, output)
    config.write_text(config.read_text().replace(str(workdir / "dolly.jsonl"), "dolly.jsonl"))
    result = ray_finetune(config, "--storage_path", tmp_path / "ray", "--", *OVERRIDES, cwd=workdir)
    log = result.stdout + result.stderr
    assert_ok(result)
    assert "ray_finetune: 2 workers x {'CPU': " in log
    assert json.loads((output / "finetune_args.json").read_text())["ddp_backend"] == "gloo"
    assert log.count("***** train metrics *****") == 1  # rank 0 alone reports and writes
    assert_matches(output, reference)


def worker_of_rank(driver: subprocess.Popen, rank: int) -> int | None:
    """The Ray Train worker whose finetune_clm.py child has RANK=rank (its parent), once that child runs."""
    for pid, parent in children(driver.pid).items():
        env = environment_of(pid)
        if env.get("RANK") == str(rank) and "MASTER_ADDR" in env and parent in children(driver.pid):
            return parent
    return None


def test_a_worker_killed_mid_run_restarts_from_the_last_checkpoint_and_matches(workdir, reference, tmp_path):
    output = tmp_path / "out"
    flags = ["--storage_path", tmp_path / "ray", "--max_failures", "1", "--", *OVERRIDES]
    flags += ["--save_strategy", "steps", "--save_steps", "2"]
    driver = start("scripts/ray_finetune.py", "--config_file", yaml_for(workdir, output), *flags, log=tmp_path / "log")
    try:
        wait_for(lambda: (output / "checkpoint-2" / "trainer_state.json").exists(), driver, 240, "checkpoint-2")
        worker = worker_of_rank(driver, 1)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)  # its child goes with it (PR_SET_PDEATHSIG)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            kill_all(driver)
    log = (tmp_path / "log").read_text()
    assert driver.returncode == 0, log[-5000:]
    assert "resuming from" in log and "checkpoint-" in log.split("resuming from", 1)[1][:300], log[-5000:]
    assert log.count("***** train metrics *****") == 1
    for checkpoint in output.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    assert_matches(output, reference)


def stop_cluster(temp_dir: str) -> None:
    """Stop the Ray processes of this one cluster (those naming its temp dir, and theirs), never another's."""
    own = {
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and temp_dir.encode() in _cmdline(entry)
    }
    pids = own | {child for pid in own for child in children(pid)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        time.sleep(2)


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def test_the_same_run_on_a_ray_start_head_cluster(workdir, reference, tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    head = [str(RAY_BIN), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", port, "--num-cpus", "2"]
    head += ["--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir]
    head += ["--object-store-memory", "100000000", "--ray-client-server-port", free_port()]
    head += ["--dashboard-agent-listen-port", free_port()]
    try:
        # A cluster of this test alone, on loopback: no token shared through ~/.ray with other clusters here.
        env = ray_env() | {"RAY_AUTH_MODE": "disabled"}
        started = subprocess.run(head, capture_output=True, text=True, timeout=120, env=env)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        output = tmp_path / "out"
        # The YAML's 32 CPUs per worker fit no 2-CPU cluster (a local Ray shrinks them; a cluster says so).
        flags = ["--ray_address", f"127.0.0.1:{port}", "--cpus_per_worker", "1", "--storage_path", tmp_path / "ray"]
        flags += ["--", *OVERRIDES]
        result = ray_finetune(yaml_for(workdir, output), *flags, env=env)
        assert_ok(result)
        assert "Started a local Ray" not in result.stdout + result.stderr  # it joined the cluster
        assert_matches(output, reference)
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
