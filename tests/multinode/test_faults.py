"""Faults between two hosts: every rank ends non-zero within --ddp_timeout plus a margin, and a rerun resumes.

One rank per node (torchrun on each), batch 1, a checkpoint every 4 steps. Once checkpoint-4 is complete the
test cuts the link between the hosts, or kills every process of node1; then it waits for every process of both
nodes to end, checks nothing final was written, and reruns the same commands: they resume from the last complete
checkpoint and end with the adapter of one uninterrupted process with the global batch. A node that starts late
must still join; one that never comes ends the job within the timeout, naming the address and port it waited on.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from launching import MASTER_PORT, host_env, run_on, start_on, torchrun
from netns_hosts import set_link
from processes import alive, children, kill_all
from runs import FLOAT32_TOLERANCE, adapter_difference, lora_flags, trainer_state

pytestmark = [pytest.mark.multinode, pytest.mark.distributed, pytest.mark.slow]

DDP_TIMEOUT_S = 20
MARGIN_S = 15  # process exit, the launchers' own teardown
# A job whose second node never comes trains nothing: its wait needs no room for a slow step or save, only to be
# told from the defaults (600 s for torchrun's rendezvous, 1800 s for a process group).
NEVER_COMES_TIMEOUT_S = 8
CHECKPOINTS = ["--save_strategy", "steps", "--save_steps", "4", "--ddp_timeout", DDP_TIMEOUT_S]
EPOCHS = ["--num_train_epochs", "3"]  # 36 steps of the global batch 2: long enough to cut in the middle


def flags_for(tiny_model, train_file, *, batch: int, epochs: list[object]) -> list[object]:
    """DETERMINISTIC_LORA with checkpoints every 4 steps and a short --ddp_timeout (later flags win)."""
    return [*lora_flags(tiny_model("llama"), train_file, batch), *epochs, *CHECKPOINTS]


def start_both(two_hosts, logs: Path, flags: list[object], *, delay_node1_s: float = 0.0):
    """The same torchrun command on node0, then (``delay_node1_s`` later) on node1; logs in ``logs``."""
    node0, node1 = two_hosts
    logs.mkdir(exist_ok=True)
    jobs = [start_on(node0, torchrun(0, node0, "finetune_clm.py", flags, nproc=1), logs / "node0.log")]
    time.sleep(delay_node1_s)
    jobs.append(start_on(node1, torchrun(1, node0, "finetune_clm.py", flags, nproc=1), logs / "node1.log"))
    return jobs


def wait_all_gone(jobs: list[subprocess.Popen], started: float, limit_s: float) -> float:
    """Seconds from ``started`` until every process of ``jobs`` (launchers and ranks) has ended."""
    everything = {pid for job in jobs for pid in (job.pid, *children(job.pid))}
    while time.monotonic() - started < limit_s:
        for job in jobs:
            job.poll()
        if not any(alive(pid) for pid in everything):
            break
        time.sleep(0.1)
    return time.monotonic() - started


def log_of(logs: Path) -> str:
    return "".join((logs / f"node{i}.log").read_text(errors="replace") for i in (0, 1))


def wait_for_checkpoint(output: Path, jobs, step: int, timeout: float = 240) -> None:
    marker = output / f"checkpoint-{step}" / "checkpoint_complete.json"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert all(job.poll() is None for job in jobs), f"a node ended before checkpoint-{step}"
        assert time.monotonic() < deadline, f"no checkpoint-{step} within {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize("fault", ["link down", "node1 killed"])
def test_a_fault_ends_every_rank_and_a_rerun_resumes(fault, two_hosts, tiny_model, train_file, one_process, tmp_path):
    output = tmp_path / "out"
    flags = [*flags_for(tiny_model, train_file, batch=1, epochs=EPOCHS), "--output_dir", output]
    jobs = start_both(two_hosts, tmp_path / "fault", flags)
    try:
        wait_for_checkpoint(output, jobs, 4)
        faulted = time.monotonic()
        if fault == "link down":
            set_link(two_hosts[1], up=False)
        else:
            kill_all(jobs[1])  # the launcher and its rank, at once
        elapsed = wait_all_gone(jobs, faulted, DDP_TIMEOUT_S + 60)
    finally:
        for job in jobs:
            kill_all(job)
    codes = [job.returncode for job in jobs]
    print(f"{fault}: every rank of both nodes ended {elapsed:.1f} s after the fault, exit codes {codes}")
    assert all(code != 0 for code in codes), (codes, log_of(tmp_path / "fault")[-5000:])
    assert elapsed <= DDP_TIMEOUT_S + MARGIN_S, log_of(tmp_path / "fault")[-5000:]
    # No half-written output: nothing final, and the rerun takes the last checkpoint marked complete.
    assert not (output / "adapter_model.safetensors").exists() and not (output / "train_results.json").exists()
    complete = max(int(p.parent.name.split("-")[1]) for p in output.glob("checkpoint-*/checkpoint_complete.json"))

    set_link(two_hosts[1], up=True)
    rerun = start_both(two_hosts, tmp_path / "rerun", flags)
    try:
        codes = [job.wait(timeout=300) for job in rerun]
    finally:
        for job in rerun:
            kill_all(job)
    log = log_of(tmp_path / "rerun")
    assert codes == [0, 0], log[-5000:]
    assert f"resuming from {output / f'checkpoint-{complete}'}" in log
    assert trainer_state(output)["global_step"] == 36
    reference = one_process("finetune_clm.py", *flags_for(tiny_model, train_file, batch=2, epochs=EPOCHS))
    assert adapter_difference(output, reference) <= FLOAT32_TOLERANCE


def test_a_node_that_starts_late_joins(two_hosts, tiny_model, train_file, one_process, tmp_path):
    output = tmp_path / "out"
    flags = [*flags_for(tiny_model, train_file, batch=1, epochs=[]), "--output_dir", output]
    jobs = start_both(two_hosts, tmp_path / "late", flags, delay_node1_s=5)
    try:
        codes = [job.wait(timeout=300) for job in jobs]
    finally:
        for job in jobs:
            kill_all(job)
    assert codes == [0, 0], log_of(tmp_path / "late")[-5000:]
    assert trainer_state(output)["global_step"] == 12
    reference = one_process("finetune_clm.py", *flags_for(tiny_model, train_file, batch=2, epochs=[]))
    assert adapter_difference(output, reference) <= FLOAT32_TOLERANCE


@pytest.mark.parametrize("launcher", ["torchrun", "environment"])
def test_a_node_that_never_comes_ends_the_job_within_the_timeout(launcher, two_hosts, tiny_model, train_file, tmp_path):
    """torchrun's own rendezvous waits --rdzv_conf timeout=N (600 s by default) before starting any rank; ranks
    started with the variables set (as a scheduler does) wait --ddp_timeout and say where they waited."""
    node0 = two_hosts[0]
    flags = [*flags_for(tiny_model, train_file, batch=1, epochs=[]), "--output_dir", tmp_path / "out"]
    flags += ["--ddp_timeout", NEVER_COMES_TIMEOUT_S]
    if launcher == "torchrun":
        rendezvous_timeout = ["--rdzv_conf", f"timeout={NEVER_COMES_TIMEOUT_S}"]
        command = torchrun(0, node0, "finetune_clm.py", flags, nproc=1, launcher_flags=rendezvous_timeout)
        env = host_env()
    else:
        command = [sys.executable, REPO / "finetune_clm.py", *flags]
        rank0 = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
        env = host_env(**rank0, MASTER_ADDR=node0.address, MASTER_PORT=str(MASTER_PORT))
    started = time.monotonic()
    result = run_on(node0, command, env=env, timeout=NEVER_COMES_TIMEOUT_S + 120)
    elapsed = time.monotonic() - started
    print(f"node1 never came ({launcher}): node0 ended after {elapsed:.1f} s, exit {result.returncode}")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    # The wait itself, as torch measured it; the whole run adds Python's and torch's start-up (up to 35 s here
    # on a busy 2-core machine).
    waited = re.search(r"Timed out after (\d+) seconds waiting for clients", log)
    assert waited and int(waited[1]) <= NEVER_COMES_TIMEOUT_S + 2, log[-3000:]
    assert elapsed <= NEVER_COMES_TIMEOUT_S + 60, log[-3000:]
    if launcher == "torchrun":
        assert "1/2 clients joined" in log, log[-3000:]
    else:
        last = log.strip().splitlines()[-1]
        assert re.fullmatch(
            rf"error: rank 0 of 2: the rendezvous at {re.escape(node0.address)}:{MASTER_PORT} did not complete "
            rf"within {NEVER_COMES_TIMEOUT_S} s \(.*1/2 clients joined.*\); .*",
            last,
        ), log[-3000:]
