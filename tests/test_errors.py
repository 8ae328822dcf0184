"""How a rank of a distributed run leaves (finetuning/errors.py)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, free_port

RANK_THAT_COMPILED = """
import concurrent.futures, os, sys
import torch.distributed as dist
from finetuning.errors import exit_on_user_error

# what torch.compile's inductor keeps after a cold compile: a pool, held for later, whose idle workers wait for work
POOL = concurrent.futures.ThreadPoolExecutor(2)

def main():
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
    list(POOL.map(abs, [-1, -2, -3]))
    print("trained", flush=True)
    return 0

exit_on_user_error(main)
"""


def test_a_rank_with_an_idle_thread_pool_exits_instead_of_waiting_forever():
    """The cold-compile run of issue #19 wrote its results and never returned: the exit joined the idle workers
    of inductor's compile pool without first telling them to stop, as the interpreter's shutdown does."""
    code = RANK_THAT_COMPILED.format(port=free_port())
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "trained"
