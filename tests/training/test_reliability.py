"""Nothing lost, nothing half-written, nothing trained on garbage (finetuning/training/reliability.py, checkpoints.py).

The end-to-end tests run finetune_clm.py as users do and compare against one uninterrupted run of the same
command: LoRA with dropout 0, float32 and a fixed seed make every run deterministic, so a run that was killed,
crashed while saving or stopped by a signal and then rerun must end with the very same adapter and a loss log
that has every step exactly once.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_script, sample_records
from processes import crash_env, kill_all, run_crashing, start, wait_for, write_driver

from finetuning.errors import UserError
from finetuning.training import checkpoints
from finetuning.training.run import resolve_resume_checkpoint

STEPS_PER_EPOCH = 12  # 24 samples, batch 2
STEPS = 3 * STEPS_PER_EPOCH
RUN = (
    "--do_train",
    "--peft",
    "lora",
    "--lora_dropout",
    "0",
    "--per_device_train_batch_size",
    "2",
    "--max_seq_length",
    "128",
    "--num_train_epochs",
    "3",
    "--learning_rate",
    "1e-2",
    "--seed",
    "7",
    "--logging_steps",
    "1",
    "--save_strategy",
    "steps",
    "--save_steps",
    "4",
    "--save_total_limit",
    "2",
)
TOLERANCE = 1e-6
FILES = {"adapter_model.safetensors": 64, "optimizer.pt": 128, "trainer_state.json": 16}  # a fake checkpoint


# --- checkpoint markers, without training -----------------------------------------------------------------


def fake_checkpoint(output_dir: Path, step: int, *, complete: bool) -> Path:
    """A checkpoint directory as the Trainer writes it; marked complete as reliability's on_save does."""
    checkpoint = output_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name, size in FILES.items():
        (checkpoint / name).write_bytes(b"x" * size)
    if complete:
        checkpoints.mark_complete(checkpoint, step)
    return checkpoint


def resume_args(output_dir: Path, **overrides) -> SimpleNamespace:
    values = dict(output_dir=str(output_dir), resume_from_checkpoint=None, overwrite_output_dir=False, do_train=True)
    return SimpleNamespace(**(values | overrides))


def test_resume_takes_the_newest_checkpoint_that_is_complete_and_intact(tmp_path, caplog):
    from transformers.trainer_utils import get_last_checkpoint

    fake_checkpoint(tmp_path, 4, complete=True)
    wanted = fake_checkpoint(tmp_path, 8, complete=True)
    fake_checkpoint(tmp_path, 12, complete=False)  # killed while saving: no marker
    damaged = fake_checkpoint(tmp_path, 16, complete=True)
    (damaged / "optimizer.pt").write_bytes(b"o" * 3)  # a file changed after the marker was written
    (tmp_path / "checkpoint-20").write_text("not a directory")

    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-16")  # what transformers alone would pick
    assert resolve_resume_checkpoint(resume_args(tmp_path)) == str(wanted)
    skipped = [record.getMessage() for record in caplog.records if "not resuming" in record.getMessage()]
    assert skipped == [
        f"not resuming from {tmp_path / 'checkpoint-16'}: optimizer.pt is missing or not the size it was saved with",
        f"not resuming from {tmp_path / 'checkpoint-12'}: not marked complete (interrupted while saving?)",
    ]
    marker = json.loads((wanted / checkpoints.MARKER).read_text())
    assert marker["global_step"] == 8
    assert marker["files"] == {name: (wanted / name).stat().st_size for name in FILES} and FILES["optimizer.pt"] == 128


def test_no_complete_checkpoint_starts_over_and_a_finished_run_is_refused(tmp_path):
    fake_checkpoint(tmp_path, 4, complete=False)
    assert resolve_resume_checkpoint(resume_args(tmp_path)) is None
    (tmp_path / "adapter_config.json").write_text("{}")  # a finished run (without checkpoints) ...
    with pytest.raises(UserError, match="holds a finished run"):
        resolve_resume_checkpoint(resume_args(tmp_path))
    fake_checkpoint(tmp_path, 8, complete=True)  # ... or one killed while saving its final model: resume
    assert resolve_resume_checkpoint(resume_args(tmp_path)).endswith("checkpoint-8")
    (tmp_path / "train_results.json").write_text("{}")
    with pytest.raises(UserError, match="holds a finished run"):
        resolve_resume_checkpoint(resume_args(tmp_path))


def test_an_explicit_checkpoint_must_exist_and_be_intact(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "old", 8, complete=True)
    assert resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(checkpoint))) == str(
        checkpoint
    )
    unmarked = fake_checkpoint(tmp_path / "plain", 4, complete=False)  # saved by transformers alone: accepted
    assert resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(unmarked))) == str(
        unmarked
    )
    (checkpoint / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match=r"field 'resume_from_checkpoint': adapter_model\.safetensors is missing"):
        resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(checkpoint)))
    with pytest.raises(UserError, match="no such checkpoint directory"):
        resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(tmp_path / "nope")))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(sample_records(24)), encoding="utf-8")
    return path


# --- end to end -------------------------------------------------------------------------------------------
# Every scenario's first run goes side by side with the others and with the uninterrupted reference run; then
# their reruns go side by side. The tests check what happened. (Serially these runs take twice as long.)


@dataclass
class Outcome:
    returncode: int | None = None
    log: str = ""
    error: BaseException | None = None  # what went wrong while driving the run

    def check(self) -> Outcome:
        if self.error is not None:
            raise self.error
        return self


@dataclass
class Scenario:
    output: Path
    first: Outcome = field(default_factory=Outcome)
    # what output_dir held after the first run: {"": its files, "checkpoint-N": that checkpoint's files, ...}
    after_first: dict[str, set[str]] = field(default_factory=dict)
    rerun: Outcome = field(default_factory=Outcome)


def listing(output: Path) -> dict[str, set[str]]:
    if not output.is_dir():
        return {}
    found = {"": {path.name for path in output.iterdir()}}
    found |= {path.name: {child.name for child in path.iterdir()} for path in checkpoint_dirs(output)}
    return found


def completed(result: subprocess.CompletedProcess[str]) -> Outcome:
    return Outcome(result.returncode, result.stdout + result.stderr)


def drive(process: subprocess.Popen, log: Path, until: Callable[[], object], what: str, act: Callable[[], None]):
    """Wait until ``until()`` holds, ``act()``, then wait for the process to end (it is cleaned up whatever happens)."""
    try:
        wait_for(until, process, timeout=300, what=what)
        act()
        process.wait(timeout=120)
    finally:
        kill_all(process)
    return Outcome(process.returncode, log.read_text(errors="replace"))


def checkpoint_dirs(output: Path) -> list[Path]:
    return sorted(output.glob("checkpoint-*")) if output.is_dir() else []


def flags(tiny_model, train_file, output: Path) -> list[object]:
    return ["--model_name_or_path", tiny_model("llama"), "--train_file", train_file, "--output_dir", output, *RUN]


STOPPED = re.compile(r"stopped by (\w+) at step (\d+), checkpoint saved: rerun the same command to resume from (\S+)")


@pytest.fixture(scope="module")
def scenarios(tiny_model, train_file, tmp_path_factory) -> dict[str, Scenario]:
    root = tmp_path_factory.mktemp("scenarios")
    driver = write_driver(root)
    names = ("reference", "sigkill", "crash", "SIGTERM", "SIGINT", "seq2seq SIGTERM")
    runs = {name: Scenario(root / name.replace(" ", "_") / "out") for name in names}

    def script(name: str) -> str:
        return "finetune_seq2seq.py" if name.startswith("seq2seq") else "finetune_clm.py"

    def args(name: str) -> list[object]:
        if name.startswith("seq2seq"):
            return ["--model_name_or_path", tiny_model("t5"), *flags(tiny_model, train_file, runs[name].output)[2:]]
        return flags(tiny_model, train_file, runs[name].output)

    def background(name: str) -> tuple[subprocess.Popen, Path]:
        log = runs[name].output.parent / "first.log"
        log.parent.mkdir(exist_ok=True)
        return start(script(name), *args(name), log=log), log

    def first(name: str) -> Outcome:
        if name == "reference":
            return completed(run_script("finetune_clm.py", *args(name)))
        if name == "crash":  # SIGKILLed inside the save of checkpoint-8, after its adapter, before its optimizer
            return completed(run_crashing(driver, args(name), crash_env("checkpoint", step=8)))
        process, log = background(name)
        if name == "sigkill":  # as the second checkpoint's directory appears, the save starts: the kill may land in it
            two = lambda: len(checkpoint_dirs(runs[name].output)) >= 2  # noqa: E731
            return drive(process, log, two, "a second checkpoint", process.kill)
        signum = getattr(signal, name.split()[-1])
        logged = lambda: "'loss'" in log.read_text(errors="replace")  # noqa: E731
        return drive(process, log, logged, "a logged step", lambda: process.send_signal(signum))

    def second(name: str) -> Outcome:
        extra: list[object] = []
        if name == "SIGINT":  # resume through the flag, from the checkpoint the message named
            stopped = STOPPED.search(runs[name].first.log)
            extra = ["--resume_from_checkpoint", stopped[3]] if stopped else []
        return completed(run_script(script(name), *args(name), *extra))

    def guarded(step: Callable[[str], Outcome], name: str) -> Outcome:
        try:
            return step(name)
        except BaseException as error:  # kept for the test of this scenario to raise
            return Outcome(error=error)

    with ThreadPoolExecutor(max_workers=3) as pool:
        for name, outcome in zip(runs, pool.map(lambda name: guarded(first, name), runs), strict=True):
            runs[name].first, runs[name].after_first = outcome, listing(runs[name].output)
        again = [name for name in runs if name != "reference" and runs[name].first.error is None]
        for name, outcome in zip(again, pool.map(lambda name: guarded(second, name), again), strict=True):
            runs[name].rerun = outcome
    return runs


def assert_same_run(output: Path, reference: Path) -> None:
    """The same adapter as the uninterrupted run, and a loss log with every step once (and the same losses)."""
    from safetensors.torch import load_file

    left, right = (load_file(str(path / "adapter_model.safetensors")) for path in (output, reference))
    assert left.keys() == right.keys() and left
    difference = max((left[name] - right[name]).abs().max().item() for name in left)
    assert difference <= TOLERANCE, difference
    histories = [json.loads((path / "trainer_state.json").read_text())["log_history"] for path in (output, reference)]
    steps, reference_steps = ([entry["step"] for entry in history if "loss" in entry] for history in histories)
    assert steps == reference_steps == list(range(1, STEPS + 1))
    losses = [[entry["loss"] for entry in history if "loss" in entry] for history in histories]
    assert losses[0] == pytest.approx(losses[1], abs=TOLERANCE)


# A step's log line as the run prints it (finetuning/training/console.py): {'step': 7, 'loss': '5.919', ...}
LOGGED_STEP = re.compile(r"\{'step': (\d+), 'loss': ")


def steps_trained(log: str) -> list[int]:
    """The optimizer steps a run took, read from its own log (logging_steps 1: one line per step)."""
    return [int(step) for step in LOGGED_STEP.findall(log)]


def assert_resumed_to_the_reference(scenario: Scenario, scenarios: dict[str, Scenario], checkpoint: int) -> None:
    """The rerun trained exactly the steps after ``checkpoint`` (a deterministic restart from scratch would
    also end at the reference adapter, with the same loss history, but would log all STEPS steps) and ended
    where the uninterrupted run did."""
    reference, rerun = scenarios["reference"].first.check(), scenario.rerun.check()
    assert reference.returncode == 0, reference.log[-3000:]
    assert rerun.returncode == 0, rerun.log[-3000:]
    assert steps_trained(reference.log) == list(range(1, STEPS + 1))  # the log line still reads as expected
    assert 0 < checkpoint < STEPS
    assert steps_trained(rerun.log) == list(range(checkpoint + 1, STEPS + 1)), rerun.log[-3000:]
    assert_same_run(scenario.output, scenarios["reference"].output)


RESUMING = re.compile(r"(?<!not )resuming from (\S+/checkpoint-(\d+))")


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes_to_the_same_adapter(scenarios):
    killed = scenarios["sigkill"]
    assert killed.first.check().returncode == -signal.SIGKILL, killed.first.log[-3000:]
    assert "train_results.json" not in killed.after_first[""]  # really cut short
    resuming = RESUMING.search(killed.rerun.check().log)
    assert resuming, killed.rerun.log[-3000:]
    assert_resumed_to_the_reference(killed, scenarios, int(resuming[2]))


@pytest.mark.slow
def test_a_crash_while_writing_a_checkpoint_leaves_nothing_resume_would_pick(scenarios):
    crash = scenarios["crash"]
    assert crash.first.check().returncode == -signal.SIGKILL, crash.first.log[-3000:]
    half = crash.after_first["checkpoint-8"]  # transformers writes in place: the adapter is there, the rest is not
    assert "adapter_model.safetensors" in half and "optimizer.pt" not in half and checkpoints.MARKER not in half
    assert checkpoints.MARKER in crash.after_first["checkpoint-4"]
    half = crash.output / "checkpoint-8"
    assert f"not resuming from {half}: not marked complete" in crash.rerun.check().log
    assert f"resuming from {crash.output / 'checkpoint-4'}" in crash.rerun.log
    assert_resumed_to_the_reference(crash, scenarios, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_stops_and_the_rerun_finishes_the_same_run(name, scenarios):
    scenario, signum = scenarios[name], getattr(signal, name)
    first = scenario.first.check()
    assert first.returncode == 128 + signum, first.log[-3000:]
    stopped = STOPPED.search(first.log)
    assert stopped and stopped[1] == name, first.log[-3000:]
    step, checkpoint = int(stopped[2]), Path(stopped[3])
    assert checkpoint == scenario.output / f"checkpoint-{step}" and step < STEPS and "Traceback" not in first.log
    assert checkpoints.MARKER in scenario.after_first[checkpoint.name]  # a complete checkpoint ...
    assert not {"train_results.json", "adapter_model.safetensors"} & scenario.after_first[""]  # ... no final model
    if name == "SIGTERM":  # the same command; SIGINT's rerun passed --resume_from_checkpoint <that checkpoint>
        assert f"resuming from {checkpoint}" in scenario.rerun.check().log
    assert_resumed_to_the_reference(scenario, scenarios, step)


@pytest.mark.slow
def test_finetune_seq2seq_has_the_same_guard(scenarios):
    """finetune_seq2seq.py attaches the same callback: a clean SIGTERM stop, a complete checkpoint, a resume."""
    scenario = scenarios["seq2seq SIGTERM"]
    first, rerun = scenario.first.check(), scenario.rerun.check()
    assert first.returncode == 128 + signal.SIGTERM, first.log[-3000:]
    stopped = STOPPED.search(first.log)
    assert stopped and checkpoints.MARKER in scenario.after_first[Path(stopped[3]).name], first.log[-3000:]
    assert rerun.returncode == 0 and f"resuming from {stopped[3]}" in rerun.log, rerun.log[-3000:]
    assert steps_trained(rerun.log) == list(range(int(stopped[2]) + 1, STEPS + 1)), rerun.log[-3000:]
    history = json.loads((scenario.output / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == list(range(1, STEPS + 1))


NAN_RUN = ("--do_train", "--peft", "lora", "--lora_dropout", "0", "--per_device_train_batch_size", "2")
NAN_RUN += ("--max_seq_length", "128", "--max_steps", "6", "--seed", "7", "--logging_steps", "1", "--save_steps", "1")


def model_with_an_inf_weight(source: Path, target: Path) -> Path:
    """A copy of a tiny model whose final norm holds one inf: every forward pass gives a nan loss."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(str(target / "model.safetensors"))
    weights["model.norm.weight"][0] = float("inf")
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("inf weight", id="inf-weight"),
        pytest.param("learning rate 1e30", id="lr-1e30", marks=pytest.mark.slow),
    ],
)
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_saves_nothing_of_it(
    fault, run, tiny_model, train_file, tmp_path
):
    output = tmp_path / "out"
    model = tiny_model("llama")
    if fault == "inf weight":
        model, expected = model_with_an_inf_weight(model, tmp_path / "broken"), "loss became nan at step 1"
    else:  # the first update makes the weights huge: the second step's gradients overflow
        expected = "gradient norm became nan at step 2"
    args = ["--model_name_or_path", model, "--train_file", train_file, "--output_dir", output, *NAN_RUN]
    result = run("finetune_clm.py", *args, "--learning_rate", "1e30" if fault != "inf weight" else "1e-2")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {expected}; stopped before updating the weights"), last
    step = int(expected.rsplit(" ", 1)[1])
    saved = sorted(int(path.name.split("-")[1]) for path in output.glob("checkpoint-*"))
    assert saved == list(range(1, step))  # the good steps, not the broken one
    assert all(checkpoints.checkpoint_problem(output / f"checkpoint-{n}") is None for n in saved)
    assert all(finite_adapter(output / f"checkpoint-{n}") for n in saved)  # no garbage was saved
    assert not (output / "adapter_model.safetensors").exists() and not (output / "train_results.json").exists()


def finite_adapter(directory: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(
        torch.isfinite(tensor).all() for tensor in load_file(str(directory / "adapter_model.safetensors")).values()
    )


@pytest.mark.slow
def test_skip_nonfinite_batches_skips_their_updates_instead(run, tiny_model, train_file, tmp_path):
    output = tmp_path / "out"
    args = ["--model_name_or_path", tiny_model("llama"), "--train_file", train_file, "--output_dir", output]
    result = run("finetune_clm.py", *args, *NAN_RUN, "--learning_rate", "1e30", "--skip_nonfinite_batches")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    skipped = re.findall(r"became (?:nan|inf) at step (\d+): skipped this step's update", result.stdout)
    assert skipped == ["2", "3", "4", "5", "6"], result.stdout[-3000:]
    assert finite_adapter(output)


def test_a_sharded_gradient_norm_is_checked_by_its_global_value():
    """FSDP2 returns the gradient norm as a DTensor, which the per-step all-reduce cannot take: its full value
    is what the check reads (a 7B FSDP run stopped at step 1 on this before)."""
    import torch

    from finetuning.training.reliability import ReliabilityCallback

    class ShardedNorm:  # the one DTensor method the check relies on
        def __init__(self, value: float) -> None:
            self.value = value

        def full_tensor(self):
            return torch.tensor(self.value)

    callback = ReliabilityCallback()
    callback._note(ShardedNorm(1.5), nan=2, inf=1)
    assert callback._nonfinite.item() == 0
    callback._note(ShardedNorm(float("nan")), nan=2, inf=1)
    assert callback._nonfinite.item() == 2
