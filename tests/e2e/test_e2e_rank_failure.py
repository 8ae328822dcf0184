"""A data-parallel job on CPU (gloo) never outlives one of its ranks for long.

Measured, not assumed: a rank killed by a signal takes the job down within seconds under mpirun (MPICH's Hydra
kills the other ranks when one dies by a signal; it does NOT when one merely exits non-zero) and under torchrun
(its agent stops the group); the survivors' pending collective also fails at once on the dead peer's closed
socket. A rank that hangs instead of dying holds the others only for --ddp_timeout, which on the CPU only applies
because the process group is started with it (transformers passes it to accelerate off the CPU only).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, launch_env, sample_records
from processes import alive, children, environment_of, kill_all, start, wait_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

BIN = Path(sys.executable).parent
DEADLINE_S = 120  # every process of the job gone within this after the kill


def launcher(name: str) -> list[str]:
    if name == "mpirun":
        if not (BIN / "mpirun").exists():
            pytest.skip(f"mpirun is not next to {sys.executable} (pip install mpich mpi4py)")
        return [str(BIN / "mpirun"), "-n", "2", sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.parametrize("name", ["mpirun", "torchrun"])
def test_a_killed_rank_takes_every_rank_down_within_a_bounded_time(name, tiny_model, tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps(sample_records(24)), encoding="utf-8")
    log = tmp_path / "job.log"
    args = ["--model_name_or_path", tiny_model("llama"), "--train_file", train, "--output_dir", tmp_path / "out"]
    args += ["--do_train", "--per_device_train_batch_size", "1", "--max_seq_length", "128"]
    args += ["--num_train_epochs", "500", "--logging_steps", "1", "--save_strategy", "no"]
    job = start("finetune_clm.py", *args, log=log, env=launch_env(), launcher=launcher(name))
    try:
        wait_for(lambda: "'loss'" in log.read_text(errors="replace"), job, timeout=300, what="a training step")
        rank_variable = "PMI_RANK" if name == "mpirun" else "RANK"  # set by the launcher, before Python starts
        ranks = {environment_of(pid).get(rank_variable): pid for pid in children(job.pid)}
        assert {"0", "1"} <= ranks.keys(), ranks  # (the launcher's helpers have no rank)
        everything = {job.pid, *children(job.pid)}

        killed_at = time.monotonic()
        os.kill(ranks["1"], signal.SIGKILL)
        job.wait(timeout=DEADLINE_S)
        while any(alive(pid) for pid in everything) and time.monotonic() - killed_at < DEADLINE_S:
            time.sleep(0.1)
        elapsed = time.monotonic() - killed_at
    finally:
        kill_all(job)
    print(f"{name}: every process gone {elapsed:.1f} s after rank 1 was killed (launcher exit {job.returncode})")
    assert job.returncode != 0
    assert not [pid for pid in everything if alive(pid)]
    assert elapsed < DEADLINE_S


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_one_checkpoint(tiny_model, tmp_path):
    """A scheduler may signal the ranks at different moments, or only one: they agree at the next step."""
    from finetuning.training.checkpoints import MARKER

    train = tmp_path / "train.json"
    train.write_text(json.dumps(sample_records(24)), encoding="utf-8")
    log, output = tmp_path / "job.log", tmp_path / "out"
    args = ["--model_name_or_path", tiny_model("llama"), "--train_file", train, "--output_dir", output]
    args += ["--do_train", "--per_device_train_batch_size", "1", "--max_seq_length", "128"]
    args += ["--num_train_epochs", "50", "--logging_steps", "1", "--save_strategy", "no"]
    job = start("finetune_clm.py", *args, log=log, env=launch_env(), launcher=launcher("mpirun"))
    try:
        wait_for(lambda: "'loss'" in log.read_text(errors="replace"), job, timeout=300, what="a training step")
        rank0 = next(pid for pid in children(job.pid) if environment_of(pid).get("PMI_RANK") == "0")
        os.kill(rank0, signal.SIGTERM)
        job.wait(timeout=DEADLINE_S)
    finally:
        kill_all(job)
    text = log.read_text(errors="replace")
    agreed = re.findall(r"SIGTERM received: saving a checkpoint at step (\d+), then stopping", text)
    assert len(agreed) == 2 and agreed[0] == agreed[1], text[-3000:]  # both ranks, the same step
    assert text.count(f"rerun the same command to resume from {output / f'checkpoint-{agreed[0]}'}") == 1
    assert job.returncode == 128 + signal.SIGTERM, text[-3000:]
    saved = json.loads((output / f"checkpoint-{agreed[0]}" / MARKER).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors", "optimizer.pt"} <= saved.keys()
    assert not (output / "adapter_model.safetensors").exists()


# Rank 1 stands for a rank that hangs (a stuck filesystem, a deadlock): it never joins rank 0's collective.
HANG = r"""
import sys
import time

sys.path.insert(0, sys.argv[1])
from finetuning.cli import parse_arguments
from finetuning.training.arguments import FinetuneTrainingArguments
from finetuning.launch.environment import setup_launch_environment

setup_launch_environment()
(args,) = parse_arguments((FinetuneTrainingArguments,), ["--output_dir", sys.argv[2], "--ddp_timeout", "3"])
args.device  # the process group exists from here on, as in the scripts
import torch.distributed as dist

if dist.get_rank() == 1:
    time.sleep(8)
    sys.exit(0)
started = time.monotonic()
try:
    dist.barrier()
    print(f"rank 0: barrier passed after {time.monotonic() - started:.1f} s", flush=True)
except Exception as error:
    print(f"rank 0: {type(error).__name__} after {time.monotonic() - started:.1f} s", flush=True)
"""


def test_ddp_timeout_bounds_a_collective_wait_on_cpu(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    command = [*launcher("mpirun"), str(script), str(REPO), str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=launch_env(), cwd=REPO)
    waited = re.search(r"rank 0: (\w+) after ([\d.]+) s", result.stdout)
    assert waited, result.stdout[-2000:] + result.stderr[-2000:]
    # Without the timeout reaching gloo, rank 0 would wait until rank 1 gives up (8 s here, 30 minutes by default).
    assert waited[1] != "barrier" and 2.5 <= float(waited[2]) < 6, waited[0]
