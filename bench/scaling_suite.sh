#!/usr/bin/env bash
# Data-parallel scaling of finetune_clm.py itself on a lent multi-GPU machine (docs/performance.md): the real
# script, real data (GPTeacher role-play + GSM8K, Alpaca template, packed into 2048-token blocks), random-weight
# Llama-shaped models saved to disk and loaded with from_pretrained, batch 4 x 2048 per GPU, bf16.
#   bash bench/scaling_suite.sh ddp    LoRA 7B and full 1B: 1 GPU, `mpirun -n N`, `torchrun --nproc_per_node N`
#   bash bench/scaling_suite.sh fsdp   full fine-tuning of the 7B shape under FSDP over N GPUs (`mpirun -n N`)
# Throughput is the script's own train_steady_tokens_per_second (non-pad tokens, all ranks, first 3 steps out).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # the lender's rule
out=${OUT:-.bench/out}; mkdir -p "$out"
gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
py=$(command -v python3)  # absolute: Open MPI puts its own bin/ first on the ranks' PATH
mpi=(mpirun --allow-run-as-root --bind-to none -x PYTHONPATH -x PYTHONUNBUFFERED -x TOKENIZERS_PARALLELISM
     -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST -x NVSHMEM_DISABLE_NVLS)
models=/tmp/models runs=/tmp/runs data=.bench/data/mix.json
mkdir -p "$models" "$runs"
[[ -f $data ]] || $py -c "import json,sys; json.dump(sum((json.load(open(f)) for f in sys.argv[2:]), []), open(sys.argv[1], 'w'))" \
  "$data" .bench/data/gpteacher_roleplay_alpaca.json .bench/data/gsm8k_train_alpaca.json
for preset in ${PRESETS_TO_SAVE:-llama7b llama1b}; do
  [[ -d $models/$preset ]] || $py bench/save_random_model.py --preset "$preset" --tokenizer .bench/tokenizer-32000 \
    --out "$models/$preset" 2>&1 | grep saved
done
common=(--train_file "$data" --do_train --dataset_concatenation --max_seq_length 2048 --per_device_train_batch_size 4
        --bf16 true --learning_rate 1e-4 --logging_steps 5 --save_strategy no --report_to none --disable_tqdm true
        --include_num_input_tokens_seen non_padding --overwrite_output_dir)

# name, launcher (1 | mpirun | torchrun), then finetune_clm.py flags
case_() {
  local name=$1 launcher=$2; shift 2
  local cmd=(finetune_clm.py --output_dir "$runs/$name" "${common[@]}" "$@")
  case $launcher in
    1) cmd=(env CUDA_VISIBLE_DEVICES=0 $py "${cmd[@]}") ;;
    mpirun) cmd=("${mpi[@]}" -n "$gpus" $py "${cmd[@]}") ;;
    torchrun) cmd=($py -m torch.distributed.run --standalone --nproc_per_node "$gpus" "${cmd[@]}") ;;
  esac
  echo "== $name: ${cmd[*]}" | tee -a "$out/scaling.log"
  local start=$SECONDS
  "${cmd[@]}" >"$runs/$name.log" 2>&1
  local rc=$?
  grep -E "steady state|Error|error:|out of memory" "$runs/$name.log" | grep -v Warning | tail -5 | tee -a "$out/scaling.log"
  echo "   rc=$rc wall=$((SECONDS - start))s" | tee -a "$out/scaling.log"
  return $rc
}

what=${1:-ddp}
if [[ $what == ddp ]]; then
  lora=(--model_name_or_path "$models/llama7b" --peft lora --lora_rank 16 --lora_alpha 32 --lora_all_linear true --max_steps 25)
  full=(--model_name_or_path "$models/llama1b" --peft none --max_steps 30)
  case_ lora7b_1gpu 1 "${lora[@]}"
  case_ lora7b_mpirun$gpus mpirun "${lora[@]}"
  case_ lora7b_torchrun$gpus torchrun "${lora[@]}"
  case_ full1b_1gpu 1 "${full[@]}"
  case_ full1b_mpirun$gpus mpirun "${full[@]}"
  case_ full1b_torchrun$gpus torchrun "${full[@]}"
fi
if [[ $what == fsdp ]]; then
  fsdp=(--model_name_or_path "$models/llama7b" --peft none --max_steps 12 --fsdp)
  case_ full7b_fsdp_mpirun$gpus mpirun "${fsdp[@]}" --fsdp_config '{"state_dict_type": "SHARDED_STATE_DICT"}' ||
    case_ full7b_fsdp_ckpt_mpirun$gpus mpirun "${fsdp[@]}" \
      --fsdp_config '{"state_dict_type": "SHARDED_STATE_DICT", "activation_checkpointing": true}'
fi
grep -h "steady state" "$runs"/*.log >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1
