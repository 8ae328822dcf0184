"""One data-parallel job over two hosts (network namespaces), under each launcher, equal to a one-host run.

Two nodes of two ranks each, batch 1 per rank, train like one process with batch 4: a quarter of the optimizer
steps of one process with batch 1, and the adapter of one process with batch 4 (fp32, <= 1e-5). On node1 the
world ranks (2, 3) differ from the local ranks (0, 1): unlike the one-host tests, a launcher mapping that used
one for the other fails here.
"""

from __future__ import annotations

import re

import pytest
from launching import host_env, mpirun, run_on, start_on, torchrun
from processes import kill_all
from runs import assert_one_job_like_one_process, lora_flags, t5_without_dropout

pytestmark = [pytest.mark.multinode, pytest.mark.distributed, pytest.mark.slow]

SCRIPTS = {"finetune_clm.py": "llama", "finetune_seq2seq.py": "t5"}
SMOKE = "scripts/collectives_smoke.py"
SMOKE_LINE = re.compile(r"rank=(\d) world_size=4 local_rank=(\d) .* allreduce=ok host=(\w+) rendezvous=(\S+)")


def flags(tiny_model, train_file, script: str, batch: int) -> list[object]:
    return lora_flags(tiny_model(SCRIPTS[script]), train_file, batch)


def assert_ok(result) -> str:
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    return log


def run_two_nodes(two_hosts, tmp_path, node_argv) -> str:
    """node1's command in the background, node0's in the foreground; both must succeed. Returns node0's log."""
    node0, node1 = two_hosts
    node1_job = start_on(node1, node_argv(1), tmp_path / "node1.log")
    try:
        log = assert_ok(run_on(node0, node_argv(0)))
        assert node1_job.wait(timeout=120) == 0, (tmp_path / "node1.log").read_text()[-5000:]
    finally:
        kill_all(node1_job)
    return log


def test_torchrun_per_node_equals_one_process(two_hosts, tiny_model, train_file, one_process, tmp_path):
    output = tmp_path / "out"
    job_flags = [*flags(tiny_model, train_file, "finetune_clm.py", 1), "--output_dir", output]
    log = run_two_nodes(two_hosts, tmp_path, lambda rank: torchrun(rank, two_hosts[0], "finetune_clm.py", job_flags))
    single, batch4 = (
        one_process("finetune_clm.py", *flags(tiny_model, train_file, "finetune_clm.py", b)) for b in (1, 4)
    )
    assert_one_job_like_one_process(output, single, batch4, log)


def test_seq2seq_under_torch_distributed_launch_equals_one_process(
    two_hosts, tiny_model, train_file, one_process, tmp_path
):
    """The seed's per-node torch.distributed.launch line. The loss is a mean over the target tokens of the whole
    step (training/seq2seq.token_count_loss), so 4 ranks on two hosts train what one process with batch 4 trains;
    T5's own dropout is off here, as in every float32 comparison, so that every rank runs the same forward."""
    base = t5_without_dropout(tiny_model("t5"), tmp_path / "t5_without_dropout")
    node0 = two_hosts[0]
    output = tmp_path / "two"
    command = [*lora_flags(base, train_file, 1), "--output_dir", output]
    log = run_two_nodes(
        two_hosts,
        tmp_path,
        lambda rank: torchrun(rank, node0, "finetune_seq2seq.py", command, module="torch.distributed.launch"),
    )
    single, batch4 = (one_process("finetune_seq2seq.py", *lora_flags(base, train_file, b)) for b in (1, 4))
    assert_one_job_like_one_process(output, single, batch4, log)


@pytest.mark.parametrize("master_addr", ["exported", "found through mpi4py"])
def test_mpirun_across_hosts_equals_one_process(master_addr, two_hosts, tiny_model, train_file, one_process, tmp_path):
    node0 = two_hosts[0]
    output = tmp_path / "out"
    # The seed exports node0's address; without it rank 0 broadcasts its own, found from its hostname.
    env = host_env(MASTER_ADDR=node0.address) if master_addr == "exported" else host_env()
    job_flags = [*flags(tiny_model, train_file, "finetune_clm.py", 1), "--output_dir", output]
    log = assert_ok(run_on(node0, mpirun(two_hosts, tmp_path, "finetune_clm.py", job_flags), env=env))
    single = one_process("finetune_clm.py", *flags(tiny_model, train_file, "finetune_clm.py", 1))
    batch4 = one_process("finetune_clm.py", *flags(tiny_model, train_file, "finetune_clm.py", 4))
    assert_one_job_like_one_process(output, single, batch4, log)


@pytest.mark.parametrize("launcher", ["mpirun", "torchrun"])
def test_each_rank_knows_its_host_and_local_rank(launcher, two_hosts, tmp_path):
    """World rank 2 is local rank 0 on node1: using one for the other fails here (not on one host). No
    MASTER_ADDR is exported: under mpirun rank 0's address comes through mpi4py."""
    node0 = two_hosts[0]
    smoke = ["--size_mb", "1", "--iters", "2"]
    if launcher == "mpirun":
        log = assert_ok(run_on(node0, mpirun(two_hosts, tmp_path, SMOKE, smoke)))
    else:
        log = run_two_nodes(two_hosts, tmp_path, lambda rank: torchrun(rank, node0, SMOKE, smoke))
        log += (tmp_path / "node1.log").read_text()
    seen = {int(m[1]): (int(m[2]), m[3], m[4]) for m in SMOKE_LINE.finditer(log)}
    rendezvous = f"{node0.address}:29500"
    expected = {0: (0, "node0"), 1: (1, "node0"), 2: (0, "node1"), 3: (1, "node1")}
    assert seen == {rank: (*where, rendezvous) for rank, where in expected.items()}, log[-4000:]
