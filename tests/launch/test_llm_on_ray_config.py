"""llm-on-ray YAML files (both schema generations) -> finetune_clm.py flags and Ray workers; bad files -> one line.

Pure mapping tests, plus scripts/ray_finetune.py refusing bad input before Ray starts. No Ray cluster is started.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO, script_env

from finetuning.errors import UserError
from finetuning.launch.llm_on_ray_config import is_llm_on_ray_config, map_llm_on_ray_config
from finetuning.launch.ray_arguments import RayArguments
from finetuning.launch.ray_train import build_plan, worker_environment

FIXTURES = REPO / "tests" / "fixtures" / "llm_on_ray"
# The issue's sample, verbatim (the later generation), and the earlier generation with the rest of their keys.
VERBATIM = (FIXTURES / "finetune.yaml").read_text()
EARLIER = (FIXTURES / "finetune_earlier.conf").read_text()


def flags_of(flags: list[str]) -> dict[str, str | None]:
    """['--a', '1', '--b'] -> {'a': '1', 'b': None}; a later flag overrides an earlier one, as on a command line."""
    parsed: dict[str, str | None] = {}
    for index, item in enumerate(flags):
        if item.startswith("--"):
            value = flags[index + 1] if index + 1 < len(flags) and not flags[index + 1].startswith("--") else None
            parsed[item[2:]] = value
    return parsed


def plan_of(text: str, path: str = "finetune.yaml"):
    config = yaml.safe_load(text)
    assert is_llm_on_ray_config(config)
    return map_llm_on_ray_config(config, path)


def test_the_issues_sample_maps_onto_the_suites_flags():
    plan = plan_of(VERBATIM)
    assert flags_of(plan.flags) == {
        "model_name_or_path": "EleutherAI/gpt-j-6b",
        "output_dir": "/tmp/llm-ray/output",
        "save_strategy": "no",  # YAML read `no` as false
        "trust_remote_code": "false",
        "peft": "lora",
        "lora_rank": "8",
        "lora_alpha": "32",
        "lora_dropout": "0.1",
        "gradient_checkpointing": "false",
        "train_file": "examples/data/sample_finetune_data_small.jsonl",
        "dataset_concatenation": "true",
        "max_seq_length": "512",
        "validation_split_percentage": "5",
        "do_train": None,
        "do_eval": None,
        "optim": "adamw_torch",
        "per_device_train_batch_size": "2",
        "num_train_epochs": "3.0",
        "learning_rate": "1e-05",
        "lr_scheduler_type": "linear",
        "weight_decay": "0.0",
        "bf16": "true",
        "use_cpu": "true",
        "gradient_accumulation_steps": "1",
        "logging_steps": "10",
    }
    assert (plan.num_workers, plan.resources_per_worker, plan.use_gpu) == (2, {"CPU": 32}, False)
    assert plan.notes == [
        "finetune.yaml: field 'General.gpt_base_model': ignored: llm-on-ray pinned an old transformers for GPT-J; "
        "this one loads GPT-J natively"
    ]


def test_the_earlier_generation_maps_too():
    plan = plan_of(EARLIER, "finetune_intel_gpu.conf")
    flags = flags_of(plan.flags)
    assert plan.flags[plan.flags.index("--lora_target_modules") :][:3] == ["--lora_target_modules", "q_proj", "v_proj"]
    expected = {
        "tokenizer_name": "EleutherAI/gpt-j-6b",
        "save_strategy": "epoch",  # checkpoint_dir: checkpoints each epoch, a rerun resumes
        "report_to": "none",
        "trust_remote_code": "true",
        "lora_rank": "16",
        "validation_file": "data/valid.jsonl",
        "do_eval": None,
        "max_seq_length": "256",
        "train_on_inputs": "true",  # mask_input: false
        "optim": "adamw_torch",  # AdamW is no HF optimizer name
        "max_steps": "40",
        "seed": "42",
        "lr_scheduler_type": "cosine",
    }
    assert {name: flags[name] for name in expected} == expected
    assert not {"use_cpu", "bf16", "fsdp", "deepspeed", "resume_from_checkpoint"} & flags.keys()
    assert (plan.num_workers, plan.resources_per_worker, plan.use_gpu) == (4, {"CPU": 8, "GPU": 1}, True)
    assert plan.notes == [
        "finetune_intel_gpu.conf: field 'General.checkpoint_dir': checkpoints go to output_dir/checkpoint-N each "
        "epoch; a rerun resumes from the last one"
    ]


@pytest.mark.parametrize(
    ("device", "mode", "expected"),
    [("gpu", "FSDP", "full_shard auto_wrap"), ("GPU", "GPU_FSDP", "full_shard auto_wrap"), ("CPU", "CPU_DDP", None)],
)
def test_device_in_either_case_and_accelerate_mode(device, mode, expected):
    plan = plan_of(
        VERBATIM.replace("device: cpu", f"device: {device}").replace("accelerate_mode: DDP", f"accelerate_mode: {mode}")
    )
    assert flags_of(plan.flags).get("fsdp") == expected
    assert plan.use_gpu == (device.lower() == "gpu") and ("GPU" in plan.resources_per_worker) == plan.use_gpu


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  logging_steps: 10", "  logging_steps: 10\n  warmup_steps: 3", "field 'Training.warmup_steps': unknown key"),
        ("batch_size: 2", "batch_size: two", "field 'Training.batch_size': expected an integer, got str 'two'"),
        ("epochs: 3", "epochs: true", "field 'Training.epochs': expected an integer or a number, got True"),
        ("accelerate_mode: DDP", "accelerate_mode: FOO", "field 'Training.accelerate_mode': expected one of DDP,"),
        ("  base_model: EleutherAI/gpt-j-6b\n", "", "field 'General.base_model': is required"),
        ("device: cpu", "device: hpu", "field 'Training.device': hpu (Gaudi) is not supported"),
        ("accelerate_mode: DDP", "accelerate_mode: GPU_DDP", "GPU_DDP runs on gpu, but Training.device is cpu"),
        ("accelerate_mode: DDP", "accelerate_mode: DEEPSPEED", "DEEPSPEED needs deepspeed installed"),
        ("task_type: CAUSAL_LM", "task_type: SEQ_2_SEQ_LM", "finetune_clm.py trains CAUSAL_LM only"),
        ("use_auth_token: null", "use_auth_token: hf_abc", "export HF_TOKEN instead"),
        ("{CPU: 32}", "{CPU: 32, GPU: 1}", "field 'Training.resources_per_worker.GPU': asks for GPUs"),
        ("General:", "Model:", "field 'Model': unknown section"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key_and_the_file(old, new, message):
    assert old in VERBATIM
    with pytest.raises(UserError) as caught:
        plan_of(VERBATIM.replace(old, new), "bad.yaml")
    assert str(caught.value).startswith("bad.yaml: ") and message in str(caught.value)


def test_a_finetune_clm_config_file_and_flags_after_the_separator(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: m\ntrain_file: t.json\noutput_dir: out\nlearning_rate: 0.001\n")
    arguments = RayArguments(config_file=str(config), num_workers=3, cpus_per_worker=2)
    plan = build_plan(arguments, ["--learning_rate", "0.01", "--do_train"])
    assert flags_of(plan.flags) == {
        "model_name_or_path": "m",
        "train_file": "t.json",
        "output_dir": "out",
        "learning_rate": "0.01",
        "do_train": None,
    }
    assert (plan.num_workers, plan.resources_per_worker, plan.use_gpu) == (3, {"CPU": 2}, False)
    llm_on_ray = tmp_path / "finetune.yaml"
    llm_on_ray.write_text(VERBATIM)
    plan = build_plan(RayArguments(config_path=str(llm_on_ray), use_gpu=True), ["--bf16", "false"])
    assert flags_of(plan.flags)["bf16"] == "false" and plan.resources_per_worker == {"CPU": 32, "GPU": 1}


def test_each_child_gets_torchruns_variables_and_nothing_contradicting():
    worker = {"PATH": "/bin", "ACCELERATE_TORCH_DEVICE": "cuda:3", "TORCHELASTIC_RUN_ID": "x", "PMI_RANK": "5"}
    env = worker_environment(worker, rank=3, world_size=4, local_rank=1, local_world_size=2, master="10.0.0.1", port=7)
    assert env == {
        "PATH": "/bin",
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "7",
    }


@pytest.fixture
def ray_finetune(monkeypatch):
    """scripts/ray_finetune.py's ``main``, run in this process with Ray's start replaced by a failure."""
    from finetuning.launch import ray_train

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_train, "run_on_ray", no_ray)
    return runpy.run_path(str(REPO / "scripts" / "ray_finetune.py"), run_name="ray_finetune")["main"]


def write_sample(tmp_path: Path, tiny_model, old: str = "", new: str = "") -> Path:
    text = VERBATIM.replace("EleutherAI/gpt-j-6b", str(tiny_model("llama"))).replace("/tmp/llm-ray", str(tmp_path))
    path = tmp_path / "finetune.yaml"
    path.write_text(text.replace(old, new) if old else text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("accelerate_mode: DDP", "accelerate_mode: FOO", "field 'Training.accelerate_mode': expected one of"),
        # the suite's own parser refuses the mapped flag, in one line naming the file
        ("lr_scheduler: linear", "lr_scheduler: sawtooth", "--lr_scheduler_type: invalid choice"),
    ],
)
def test_the_script_refuses_a_bad_file_in_one_line_before_ray_starts(
    old, new, message, tmp_path, tiny_model, ray_finetune, monkeypatch
):
    from finetuning.launch import ray_train

    monkeypatch.setattr(ray_train, "ray_available", lambda: True)
    path = write_sample(tmp_path, tiny_model, old, new)
    with pytest.raises(UserError) as caught:
        ray_finetune(["--config_file", str(path)])
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_without_ray_the_script_says_how_to_install_it(tmp_path, ray_finetune, monkeypatch):
    from finetuning.launch import ray_train

    monkeypatch.setattr(ray_train, "ray_available", lambda: False)
    with pytest.raises(UserError, match=r"^Ray is not installed; pip install -r requirements-ray.txt$"):
        ray_finetune(["--config_file", str(tmp_path / "finetune.yaml")])


@pytest.mark.slow  # a fresh interpreter importing transformers: 20 s on a busy 2-core machine
def test_the_suite_does_not_import_ray():
    code = textwrap.dedent(
        """
        import sys
        import finetuning.launch.ray_train, finetuning.launch.llm_on_ray_config, finetuning.training.run
        assert "ray" not in sys.modules, "imported ray"
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=script_env(), timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_workers_that_do_not_fit_shrink_on_a_local_ray_and_are_refused_on_a_cluster(monkeypatch):
    ray = pytest.importorskip("ray")
    from finetuning.launch import ray_train
    from finetuning.launch.llm_on_ray_keys import RayPlan

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    lines: list[str] = []
    plan = RayPlan(num_workers=2, resources_per_worker={"CPU": 32})
    ray_train._fit_resources(plan, local=True, report=lines.append)
    assert plan.resources_per_worker == {"CPU": 1} and lines == [
        "2 workers x 32 CPUs do not fit this machine's 2: each worker gets 1"
    ]
    with pytest.raises(UserError, match=r"^2 workers x 32 CPU do not fit the cluster's 2 CPU$"):
        ray_train._fit_resources(RayPlan(num_workers=2, resources_per_worker={"CPU": 32}), local=False, report=print)
    with pytest.raises(UserError, match=r"^2 workers x 1 GPU do not fit the cluster's 0 GPU$"):
        gpus = RayPlan(num_workers=2, resources_per_worker={"CPU": 1, "GPU": 1}, use_gpu=True)
        ray_train._fit_resources(gpus, local=True, report=print)
