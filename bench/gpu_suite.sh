#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one device call (the lent machine has no `datasets`,
# `liger-kernel`, or this project's transformers/peft pins: they travel as wheels in .whl/, and the shared
# data in .bench/data/). Every table starts with the plain HF Trainer + PEFT baseline of the same run, so the
# printed ratios are against it. Usage on the device machine:  bash bench/gpu_suite.sh [fixed|levers|real|warmup|cuda|all]
#   fixed:  baseline, the peers' switches (Liger, torch.compile, both) on the plain path, the project's defaults
#   levers: the project with each lever of finetuning/model/levers.py flipped, one at a time
#   real:   real data padded / naive concatenation / packed
#   warmup: time to the first optimizer step on the issue's small 4-layer model, each variant in a fresh process
#           with a fresh inductor cache (cold), FlexAttention once more with the warm cache; losses vs the plain path
#   unsloth: the peer of #18, Unsloth, beside the baseline under the image's transformers (Unsloth pins <= 5.17)
#           and the project; its wheels, trimmed to fit a call, come from `python3 bench/unsloth_wheels.py
#           --out .bench/wheels-unsloth` run beforehand where pip can download
#   cuda:   the tests marked cuda (FlashAttention varlen kernel, a packed bf16 memorization run through inference.py)
set -euo pipefail
if [[ ! -d .whl ]] && [[ -d ../shared/wheels-gpu ]]; then mkdir -p .whl && cp ../shared/wheels-gpu/*.whl .whl/; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-.bench/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 -c "import liger_kernel" 2>/dev/null && echo "liger-kernel installed" || echo "liger-kernel NOT installed"
b7=(bench/train_throughput.py --preset llama7b --device cuda --seq 2048 --batch 4 --steps ${STEPS:-8} --warmup 3)
quiet() { grep -vE "Warning|warn\(" | tee "$1"; }
what=${1:-all}
if [[ $what == fixed || $what == all ]]; then
  python3 "${b7[@]}" --json "$out/fixed.json" --variants \
    "${FIXED_VARIANTS:-baseline,baseline+liger,baseline+compile,baseline+liger+compile,project,project+ckpt}" 2>&1 \
    | quiet "$out/fixed.log"
fi
if [[ $what == levers || $what == all ]]; then
  python3 "${b7[@]}" --json "$out/levers.json" --variants \
    "${LEVER_VARIANTS:-baseline,project,project+shared,project+nofn,project+nofuse,project+layercompile,project+adamw,project+noliger,project+noliger+chunkce,project+noliger+layercompile}" \
    2>&1 | quiet "$out/levers.log"
fi
if [[ $what == real || $what == all ]]; then
  python3 bench/train_throughput.py --preset llama7b --device cuda --seq 2048 --batch 4 --padded_batch 8 \
    --steps ${STEPS:-8} --warmup 3 --data real --data_dir .bench/data --layouts naive,packed \
    --variants "${REAL_VARIANTS:-project,project+flex,project+sdpa}" \
    --json "$out/real.json" 2>&1 | quiet "$out/real.log"
fi
if [[ $what == warmup || $what == all ]]; then
  for variant in ${WARMUP_VARIANTS:-project+plain project project+flex}; do
    cache=$(mktemp -d)
    TORCHINDUCTOR_CACHE_DIR=$cache python3 bench/train_throughput.py --preset llama4layer --device cuda --seq 2048 \
      --batch 4 --steps 77 --warmup 3 --data real --data_dir .bench/data --layouts packed --variants "$variant" \
      --json "$out/warmup_${variant//+/_}.json" 2>&1 | quiet "$out/warmup_${variant//+/_}.log"
    if [[ $variant == project+flex ]]; then  # the same again, compiled kernels now in the on-disk cache
      TORCHINDUCTOR_CACHE_DIR=$cache python3 bench/train_throughput.py --preset llama4layer --device cuda --seq 2048 \
        --batch 4 --steps 77 --warmup 3 --data real --data_dir .bench/data --layouts packed --variants project+flex \
        --json "$out/warmup_project_flex_warm.json" 2>&1 | quiet "$out/warmup_project_flex_warm.log"
    fi
  done
  python3 - "$out" <<'PY'  # first step against the plain path's, and every step's loss against it (80 steps)
import json, pathlib, sys
rows = {p.stem[7:]: json.loads(p.read_text())[0] for p in sorted(pathlib.Path(sys.argv[1]).glob("warmup_*.json"))}
plain = rows.get("project_plain")
for name, row in rows.items():
    line = f"{name:22} first step {row['first_step_s']:6.1f} s  {row['tokens_per_s']:9.0f} tokens/s"
    if plain:
        diff = max(abs(a - b) for a, b in zip(row["losses"], plain["losses"]))
        line += f"  {row['first_step_s'] / plain['first_step_s']:5.2f}x plain's first step, max loss diff {diff:.1e} over {len(row['losses'])} steps"
    print(line)
PY
fi
if [[ $what == unsloth ]]; then
  # Unsloth's own site: its wheels and the project's, less the project's transformers and datasets (it pins
  # transformers <= 5.17 and datasets < 5). Each Unsloth variant runs alone: importing it patches transformers.
  site=/tmp/site-unsloth
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    $(ls .whl/*.whl | grep -v -e /transformers- -e /datasets-) .bench/wheels-unsloth/*.whl
  export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
  for variant in ${UNSLOTH_VARIANTS:-baseline unsloth unsloth+ckpt}; do
    PYTHONPATH=$site python3 "${b7[@]}" --variants "$variant" --json "$out/unsloth_${variant//+/_}.json" 2>&1 \
      | quiet "$out/unsloth_${variant//+/_}.log" || echo "$variant failed: the table goes on without it"
  done
  python3 "${b7[@]}" --variants "${PROJECT_VARIANTS:-baseline,project,project+ckpt4}" --json "$out/unsloth_project.json" \
    2>&1 | quiet "$out/unsloth_project.log"
  python3 - "$out" <<'PY'  # one table, each row against the baseline of the image's transformers (Unsloth's)
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = [row for path in sorted(out.glob("unsloth_*.json")) if path.stem != "unsloth_project" for row in json.loads(path.read_text())]
rows = sorted(rows, key=lambda row: row["variant"] != "baseline")
for row in rows:
    row["variant"] += " (transformers 5.17)"
rows += json.loads((out / "unsloth_project.json").read_text())
base = rows[0]
for row in rows:
    print(f"{row['variant']:34} {row['tokens_per_s']:9.0f} tokens/s {row['tokens_per_s'] / base['tokens_per_s']:5.2f}x "
          f"{row['peak_gib']:6.1f} GiB {row['peak_gib'] / base['peak_gib']:5.2f}x  first step {row['first_step_s']:5.1f} s"
          f"  first loss {row['first_loss']:.4f}")
PY
fi
if [[ $what == cuda || $what == all ]]; then  # the tests that need an NVIDIA GPU (skipped in CI)
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/model/test_varlen_attention.py tests/e2e/test_e2e_cuda.py 2>&1 \
    | tail -n 30 | tee "$out/cuda_tests.log"
fi
