"""The benchmarks' CPU smoke mode (bench/): the same code the GPU and Xeon measurements run, on a tiny model,
so a change that breaks them shows here rather than on a lent machine. The scripts start from the warm
interpreter (tests/warm_start.py: the same process less the 5 s of imports)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

SHARED_DATA = REPO.parent / "shared" / "data"


def test_fixed_length_smoke_variants_train_alike_and_the_adapter_moves_the_loss(warm_run, tmp_path):
    """Every variant trains the same batches in the same order from the same weights. The first loss is equal by
    construction (LoRA's B starts at zero), so the comparison that tells is the loss after the first optimizer
    step, where the adapter is no longer zero. The learning rate is raised so that one step moves that loss far
    more than rounding does: measured, the trained variants agree within 6e-4 (bf16 autocast; the project keeps
    its frozen base in bf16, the baseline in float32) while training moved the loss by 1.8e-2 from the frozen
    (learning rate 0) reference; a fused LoRA update that drops its alpha/r scaling moves it by 1.3e-2."""
    report = tmp_path / "fixed.json"
    variants = [
        "baseline",
        "project",
        "project+nofuse",
        "project+noshared+nofn",
        "project+chunkce",
        "project+ckpt2",  # every second layer recomputed
        "baseline+frozen",
    ]
    result = warm_run(
        "bench/train_throughput.py",
        *("--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--seq", "64"),
        *("--learning_rate", "5e-2", "--variants", ",".join(variants), "--work", tmp_path, "--json", report),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(report.read_text())
    assert [r["variant"] for r in results] == variants
    assert all(r["tokens_per_s"] > 0 and r["finite_grads"] and len(r["losses"]) == 3 for r in results)
    *trained, frozen = results
    first = [r["first_loss"] for r in results]
    assert max(first) - min(first) < 1e-3  # same batch, same weights, zero adapter: only rounding differs
    tolerance = 2e-3
    after_one_step = [r["losses"][1] for r in trained]
    assert max(after_one_step) - min(after_one_step) < tolerance, after_one_step
    effect = min(abs(loss - frozen["losses"][1]) for loss in after_one_step)
    assert effect > 5 * tolerance, (effect, after_one_step, frozen["losses"])
    assert "LoRA updates fused into one matrix product" in results[1]["applied"]
    assert "chunked cross-entropy" in results[4]["applied"] and "chunked cross-entropy" not in results[1]["applied"]
    assert all(0 < r["first_step_s"] <= r["warmup_s"] for r in results)
    assert "ratio" in result.stdout


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_real_data_smoke_layouts_hold_the_same_tokens_and_packing_fills_rows(warm_run, tmp_path):
    """Padded (one sample a row), naive concatenation and packing of the same samples hold the same tokens and
    the same supervised labels; packing fills a batch of rows with more real tokens than padding does. The block
    (1024) is above the median sample (about 340 tokens with the tiny 512-token vocabulary), so blocks hold
    several samples; at 256 nearly every sample would be cut to the block and packing would change nothing."""
    report = tmp_path / "real.json"
    result = warm_run(
        "bench/train_throughput.py",
        *("--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--seq", "1024"),
        *("--data", "real", "--data_dir", SHARED_DATA, "--layouts", "padded,naive,packed", "--padded_batch", "4"),
        *("--work", tmp_path, "--json", report),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    padded, naive, packed = rows = json.loads(report.read_text())
    assert [r["variant"] for r in rows] == ["baseline:padded", "baseline:naive", "project:packed"]
    assert all(r["finite_grads"] and r["tokens"] > 0 for r in rows)
    # no token lost or repeated, and packing masks only labels the prompt mask already hid
    assert padded["dataset_tokens"] == naive["dataset_tokens"] == packed["dataset_tokens"]
    assert padded["supervised_tokens"] == naive["supervised_tokens"] == packed["supervised_tokens"] > 0
    # naive concatenation is the densest layout; first-fit-decreasing stays within 10% of it
    assert naive["rows"] == -(-naive["dataset_tokens"] // 1024)
    assert naive["rows"] <= packed["rows"] < 1.1 * naive["rows"] and 2 * packed["rows"] < padded["rows"]
    # the same 4 rows a step: packed rows carry 1.5x the real tokens of padded ones (2.3x measured), less padding
    assert packed["tokens"] > 1.5 * padded["tokens"]
    assert packed["pad_fraction"] < padded["pad_fraction"]


def test_random_full_size_model_saver_refuses_a_tokenizer_with_other_special_ids(warm_run, tmp_path, tiny_tokenizer):
    """The pad row of a random embedding is zero; if BOS were that row, training would get NaN gradients."""
    from finetuning.model.tiny import build_tokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    saved = warm_run(
        "bench/save_random_model.py", "--preset", "tiny", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "m"
    )
    assert saved.returncode == 0, saved.stderr[-2000:]
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
    other = build_tokenizer(["a b c"], vocab_size=64)
    other.add_special_tokens({"bos_token": "<bos2>"})
    other.save_pretrained(tmp_path / "other")
    refused = warm_run(
        "bench/save_random_model.py", "--preset", "tiny", "--tokenizer", tmp_path / "other", "--out", tmp_path / "n"
    )
    assert refused.returncode == 2 and "bos/eos/pad ids" in refused.stderr


@pytest.mark.slow
def test_serve_bench_smoke_compares_served_clients_with_one_by_one(warm_run, tmp_path):
    report = tmp_path / "serve.json"
    result = warm_run(
        "bench/serve_bench.py",
        *("--preset", "tiny", "--device", "cpu", "--model", tmp_path / "model", "--prompt_tokens", "16"),
        *("--new_tokens", "4", "--concurrency", "1", "4", "--requests", "8", "--baseline_requests", "2"),
        *("--json", report),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(report.read_text())
    assert [row["clients"] for row in rows] == [0, 1, 4]
    assert [row["requests"] for row in rows] == [2, 8, 8]
    assert all(row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0 for row in rows)
    assert "one by one" in result.stdout


def test_unsloth_wheels_leave_out_only_the_ui_and_other_cuda_releases(tmp_path):
    """The peer's wheels must fit a device call: trimmed of Unsloth's web UI and of bitsandbytes' libraries for
    other CUDA releases, with their RECORD naming exactly what is left (pip installs from it)."""
    import sys
    import zipfile

    sys.path.insert(0, str(REPO / "bench"))
    from unsloth_wheels import trim

    published = tmp_path / "published"
    published.mkdir()
    wheels = {
        "unsloth-1-py3-none-any.whl": ["unsloth/__init__.py", "studio/frontend/app.js", "studio/backend/main.py"],
        "bitsandbytes-1-py3-none-any.whl": [
            "bitsandbytes/__init__.py",
            "bitsandbytes/libbitsandbytes_cpu.so",
            "bitsandbytes/libbitsandbytes_cuda130.so",
            "bitsandbytes/libbitsandbytes_cuda128.so",
            "bitsandbytes/libbitsandbytes_rocm72.so",
        ],
    }
    for name, files in wheels.items():
        record = f"{name.split('-')[0]}-1.dist-info/RECORD"
        with zipfile.ZipFile(published / name, "w") as wheel:
            for file in files:
                wheel.writestr(file, "x")
            wheel.writestr(record, "".join(f"{file},sha256=x,1\n" for file in [*files, record]))
    out = tmp_path / "out"
    out.mkdir()
    assert [trim(published / name, out, "130") for name in wheels] == [2, 3]
    kept = {"unsloth": ["unsloth/__init__.py"], "bitsandbytes": ["bitsandbytes/__init__.py"]}
    kept["bitsandbytes"].append("bitsandbytes/libbitsandbytes_cuda130.so")
    for name in wheels:
        package = name.split("-")[0]
        with zipfile.ZipFile(out / name) as wheel:
            record = f"{package}-1.dist-info/RECORD"
            assert wheel.namelist() == [*kept[package], record]
            assert [line.split(",")[0] for line in wheel.read(record).decode().splitlines()] == [*kept[package], record]


def test_unsloth_variant_refuses_company_in_its_process(warm_run, tmp_path):
    """Importing Unsloth patches transformers: a baseline measured in the same process would not be the plain one."""
    refused = warm_run(
        "bench/train_throughput.py", "--variants", "baseline,unsloth", "--work", tmp_path, "--preset", "tiny"
    )
    assert refused.returncode == 2 and "unsloth variants run alone" in refused.stderr
    assert not (tmp_path / "baseline").exists()
