"""finetune_clm.py as a real two-process data-parallel job on CPU (gloo), under each launcher users start it with.

The reference is a single process that sees the same global batch: LoRA (dropout 0), float32, the sequential
sampler and a fixed seed make every run deterministic, so a data-parallel run must do half the optimizer steps of
a single process with the same per-device batch, and end with the adapter of a single process whose batch is the
two ranks' batches together. accelerate hands the ranks whole per-device batches in turn (with batch 2, rank 0
trains on samples [0, 1], [4, 5], ... and rank 1 on [2, 3], [6, 7], ...), so each global step covers the same
samples as one single-process step of twice the batch; the loss is normalised by the global count of supervised
tokens (``average_tokens_across_devices``, on by default in transformers 5), so the gradients agree even though
the two ranks' batches hold different numbers of supervised tokens. If a rank trained alone the step count, the
adapter and the logged losses would all differ.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, launch_env
from runs import FLOAT32_TOLERANCE, adapter_difference, logged_losses, lora_flags, trainer_state

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

BIN = Path(sys.executable).parent
PER_DEVICE_BATCH = 2
DATA_REPORT = "train data: 24 samples read"


def mpirun() -> list[str]:
    path = BIN / "mpirun"
    if not path.exists():
        pytest.skip(f"mpirun is not next to {sys.executable} (pip install mpich mpi4py)")
    return [str(path), "-n", "2", sys.executable]


# --standalone: torchrun picks a free rendezvous port itself, so parallel test runs do not collide on 29500.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
LEGACY_LAUNCH = [sys.executable, "-m", "torch.distributed.launch", "--standalone", "--nproc_per_node", "2"]


def launch(command: list[str], *args: object, timeout: float = 300):
    """Run ``command ... finetune_clm.py args`` from the repo root (the launcher's output captured)."""
    full = [*command, str(REPO / "finetune_clm.py"), *map(str, args)]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=launch_env(), cwd=REPO)


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def distributed_flags(tiny_model, train_file, output: Path) -> list[object]:
    return [*lora_flags(tiny_model("llama"), train_file, PER_DEVICE_BATCH), "--output_dir", output]


@pytest.mark.parametrize("launcher", ["mpirun", "torchrun"])
def test_two_ranks_train_one_model_like_one_process_with_the_global_batch(
    launcher, one_process, tiny_model, train_file, tmp_path
):
    output = tmp_path / launcher
    command = mpirun() if launcher == "mpirun" else TORCHRUN
    result = launch(command, *distributed_flags(tiny_model, train_file, output))
    assert_ok(result)
    same_batch, same_global_batch = (
        one_process("finetune_clm.py", *lora_flags(tiny_model("llama"), train_file, batch))
        for batch in (PER_DEVICE_BATCH, 2 * PER_DEVICE_BATCH)
    )

    # One job of two ranks: half the optimizer steps of one process with the same per-device batch.
    assert trainer_state(same_batch)["global_step"] == 12
    assert trainer_state(output)["global_step"] == trainer_state(same_batch)["global_step"] // 2
    log = result.stdout + result.stderr  # the project logs to stdout, transformers to stderr
    assert "Instantaneous batch size per device = 2" in log
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log
    assert log.count("distributed run: 2 processes (2 on this node), backend gloo, launched by ") == 1  # rank 0
    assert json.loads((output / "finetune_args.json").read_text())["ddp_backend"] == "gloo"

    # The same model as one process with the global batch: adapter and every step's logged loss.
    difference = adapter_difference(output, same_global_batch)
    print(f"{launcher}: adapter max-abs difference to one process with batch 4: {difference:.3g}")
    assert difference <= FLOAT32_TOLERANCE
    assert logged_losses(output) == pytest.approx(logged_losses(same_global_batch), abs=FLOAT32_TOLERANCE)
    # Control: the comparison can tell the batches apart (a rank training alone would match this run instead).
    assert adapter_difference(same_batch, same_global_batch) > 100 * FLOAT32_TOLERANCE

    # Only rank 0 reports and writes: one data report and one summary in the merged output, and exactly the
    # files a single process writes (nothing per rank beside them).
    assert log.count(DATA_REPORT) == 1, log
    assert log.count("trainable parameters:") == 1
    assert log.count("***** train metrics *****") == 1
    assert sorted(path.name for path in output.iterdir()) == sorted(path.name for path in same_global_batch.iterdir())


# Runs finetune_clm.py unchanged and, after it saved, has every rank write the trainable weights it holds.
PER_RANK_DUMP = r"""
import runpy
import sys
from pathlib import Path

from finetuning.training import run as training

script, dump_dir = sys.argv[1], Path(sys.argv[2])  # then finetune_clm.py's own flags
train_and_save = training.train_and_save


def train_save_and_dump(trainer, **kwargs):
    metrics = train_and_save(trainer, **kwargs)
    from safetensors.torch import save_file

    # trainer.model is the PeftModel itself (DDP's wrapper is trainer.model_wrapped); PEFT saves these tensors
    # under the same names without the adapter's name.
    weights = {
        name.replace(".default.", "."): p.detach().contiguous()
        for name, p in trainer.model.named_parameters()
        if p.requires_grad
    }
    save_file(weights, str(dump_dir / f"rank{trainer.args.process_index}.safetensors"))
    return metrics


training.train_and_save = train_save_and_dump
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def test_every_rank_ends_with_the_weights_rank_0_saved(tiny_model, train_file, tmp_path):
    from safetensors.torch import load_file

    driver, dumps, output = tmp_path / "dump_ranks.py", tmp_path / "ranks", tmp_path / "out"
    driver.write_text(PER_RANK_DUMP)
    dumps.mkdir()
    result = launch([*mpirun(), str(driver)], dumps, *distributed_flags(tiny_model, train_file, output))
    assert_ok(result)

    assert sorted(path.name for path in dumps.iterdir()) == ["rank0.safetensors", "rank1.safetensors"]
    rank0, rank1 = (load_file(str(dumps / f"rank{rank}.safetensors")) for rank in (0, 1))
    saved = load_file(str(output / "adapter_model.safetensors"))
    assert rank0.keys() == rank1.keys() == saved.keys() and saved
    assert all(rank0[name].equal(rank1[name]) for name in rank0)  # DDP keeps the replicas bitwise equal
    assert all(rank0[name].equal(saved[name]) for name in saved)  # and rank 0 saved what it held


def test_legacy_torch_distributed_launch_with_its_local_rank_flag(tiny_model, train_file, tmp_path):
    """torch.distributed.launch passes --local-rank=N to the script; the old --no_cuda --xpu_backend flags too."""
    output = tmp_path / "legacy"
    flags = distributed_flags(tiny_model, train_file, output)
    result = launch(LEGACY_LAUNCH, *flags, "--no_cuda", "--xpu_backend", "gloo")
    assert_ok(result)
    assert trainer_state(output)["global_step"] == 6
    assert (result.stdout + result.stderr).count(DATA_REPORT) == 1
    assert (output / "adapter_model.safetensors").is_file()


# A rank with a started process group, leaving through the scripts' entry wrapper.
EXIT_PROBE = r"""
import atexit
import sys

import torch.distributed as dist

from finetuning.errors import UserError, exit_on_user_error


def main():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[2]}", rank=0, world_size=1)
    atexit.register(lambda: print("atexit handlers ran"))
    sys.stdout.write("buffered output, ")
    if sys.argv[1] == "user error":
        raise UserError("bad flag", field="learning_rate")
    return {"train_loss": 1.0}


exit_on_user_error(main)
print("interpreter finalization reached")
"""


@pytest.mark.parametrize(("mode", "exit_code"), [("finished", 0), ("user error", 2)])
def test_a_rank_leaves_without_interpreter_finalization(mode, exit_code, tmp_path):
    """gloo's worker threads can abort a finished rank during interpreter finalization (SIGABRT, about one
    torchrun launch in ten here); so a rank skips it, after running what a normal exit runs."""
    probe = tmp_path / "probe.py"
    probe.write_text(EXIT_PROBE)
    env = {name: value for name, value in launch_env().items() if name != "PYTHONUNBUFFERED"}
    result = subprocess.run(
        [sys.executable, str(probe), mode, free_port()], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert result.stdout == "buffered output, atexit handlers ran\n"
    if exit_code:
        assert result.stderr.strip().splitlines()[-1] == "error: field 'learning_rate': bad flag"
