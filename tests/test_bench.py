"""The benchmarks' CPU smoke mode (bench/): the same code the GPU and Xeon measurements run, on a tiny model,
so a change that breaks them shows here rather than on a lent machine."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run_script

SHARED_DATA = REPO.parent / "shared" / "data"


def test_fixed_length_smoke_compares_baseline_and_project_with_the_same_first_loss(tmp_path):
    report = tmp_path / "fixed.json"
    result = run_script(
        "bench/train_throughput.py",
        *("--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--seq", "64"),
        *(
            "--variants",
            "baseline,project,project+nofuse,project+noshared+nofn,project+chunkce,project+ckpt",
            "--work",
            tmp_path,
            "--json",
            report,
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(report.read_text())
    assert [r["variant"] for r in results] == [
        "baseline",
        "project",
        "project+nofuse",
        "project+noshared+nofn",
        "project+chunkce",
        "project+ckpt",
    ]
    assert all(r["tokens_per_s"] > 0 and r["finite_grads"] for r in results)
    losses = [r["first_loss"] for r in results]
    assert max(losses) - min(losses) < 2e-2  # same batch, same weights: only rounding differs
    assert "LoRA updates fused into one matrix product" in results[1]["applied"]
    assert "chunked cross-entropy" in results[4]["applied"] and "chunked cross-entropy" not in results[1]["applied"]
    assert all(0 < r["first_step_s"] <= r["warmup_s"] for r in results)
    assert "ratio" in result.stdout


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_real_data_smoke_compares_padded_naive_and_packed(tmp_path):
    report = tmp_path / "real.json"
    result = run_script(
        "bench/train_throughput.py",
        *("--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--seq", "256"),
        *("--data", "real", "--data_dir", SHARED_DATA, "--layouts", "padded,naive,packed", "--padded_batch", "4"),
        *("--work", tmp_path, "--json", report),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = [r["variant"] for r in json.loads(report.read_text())]
    assert names == ["baseline:padded", "baseline:naive", "project:packed"]


def test_random_full_size_model_saver_refuses_a_tokenizer_with_other_special_ids(tmp_path, tiny_tokenizer):
    """The pad row of a random embedding is zero; if BOS were that row, training would get NaN gradients."""
    from finetuning.model.tiny import build_tokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    saved = run_script(
        "bench/save_random_model.py", "--preset", "tiny", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "m"
    )
    assert saved.returncode == 0, saved.stderr[-2000:]
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
    other = build_tokenizer(["a b c"], vocab_size=64)
    other.add_special_tokens({"bos_token": "<bos2>"})
    other.save_pretrained(tmp_path / "other")
    refused = run_script(
        "bench/save_random_model.py", "--preset", "tiny", "--tokenizer", tmp_path / "other", "--out", tmp_path / "n"
    )
    assert refused.returncode == 2 and "bos/eos/pad ids" in refused.stderr


@pytest.mark.slow
def test_serve_bench_smoke_compares_served_clients_with_one_by_one(tmp_path):
    report = tmp_path / "serve.json"
    result = run_script(
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
