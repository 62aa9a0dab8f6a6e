#!/usr/bin/env bash
# Every CPU benchmark of docs/bench.md, vlm-zoo and PyTorch back to back on the same files, one
# JSON line each into OUT (default bench.jsonl); then `python scripts/bench_table.py OUT`.
#
#   cargo build --release
#   bash scripts/bench_all.sh bench.jsonl [MODELS_DIR]
#
# MODELS_DIR (default /tmp) holds the random-weight folders; missing ones are made by
# scripts/make_bench_models.py. PYTHON (default python3) must have scripts/requirements.txt.
# THREADS (default 2) is PyTorch's thread count; vlm-zoo uses every core (run on a machine
# with exactly THREADS cores, or pin both with taskset). ONLY="gemma-100m paligemma-3b" runs
# just those benchmarks and appends to OUT. NO_AMX=1 measures both sides as on a CPU without AMX
# (Zen 4, Ice Lake): vlm-zoo with VLM_ZOO_AMX=0, PyTorch's oneDNN held to AVX512-BF16
# (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16); the read bandwidth is still this CPU's (no AMX peak row).
set -euo pipefail
if [ "${NO_AMX:-0}" != 0 ]; then export VLM_ZOO_AMX=0 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16; fi
out=${1:-bench.jsonl}
models=${2:-/tmp}
py=${PYTHON:-python3}
threads=${THREADS:-2}
bin=${VLM_ZOO:-target/release/vlm-zoo}
[ -n "${ONLY:-}" ] || : > "$out"
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
run() {  # run LABEL BENCHMARK DIR COMMAND...: appends {"label", "bench", ...the command's JSON}
  local label=$1 bench=$2 dir=$3; shift 3
  echo "== $bench / $label: $*" >&2
  cat "$dir"/*.safetensors > /dev/null  # every run starts with the files in the page cache
  local json
  json=$("$@" | tail -n 1)
  "$py" -c 'import json,sys; d=json.loads(sys.argv[3]); d.update(label=sys.argv[1], bench=sys.argv[2]); print(json.dumps(d))' \
    "$label" "$bench" "$json" >> "$out"
}
both() {  # both BENCHMARK DIR VLM_ZOO_ARGS -- TORCH_ARGS
  local bench=$1 dir=$2; shift 2
  want "$bench" || return 0
  [ -f "$dir/config.json" ] || "$py" scripts/make_bench_models.py "$(basename "$dir")" "$dir"
  local ours=() torch=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do ours+=("$1"); shift; done
  shift
  torch=("$@")
  run "vlm-zoo flex" "$bench" "$dir" "$bin" bench --model "$dir" --device flex "${ours[@]}"
  [ -n "${SKIP_NDARRAY:-}" ] || [ "$bench" = paligemma-3b ] || [ "$bench" = siglip-b16-train ] ||
    run "vlm-zoo ndarray" "$bench" "$dir" "$bin" bench --model "$dir" --device ndarray "${ours[@]}"
  run "pytorch" "$bench" "$dir" "$py" scripts/bench_torch.py "$dir" "${torch[@]}" --threads "$threads"
  # Inference benchmarks: packed CPU weights, and PyTorch in bf16 (its best setting on CPUs
  # with AVX512_BF16; the table takes PyTorch's better dtype per metric).
  # Training: also bf16 compute on a cast of the f32 weights (`--precision bf16`).
  if [[ "$bench" == *train ]]; then
    run "vlm-zoo flex bf16" "$bench" "$dir" "$bin" bench --model "$dir" --device flex --precision bf16 "${ours[@]}"
  fi
  if [[ "$bench" != *train ]]; then
    run "vlm-zoo flex bf16" "$bench" "$dir" "$bin" bench --model "$dir" --device flex --dtype bf16 "${ours[@]}"
    run "vlm-zoo flex q8" "$bench" "$dir" "$bin" bench --model "$dir" --device flex --dtype q8 "${ours[@]}"
    run "pytorch bf16" "$bench" "$dir" "$py" scripts/bench_torch.py "$dir" "${torch[@]}" --threads "$threads" --dtype bf16
  fi
}
# The hardware bounds: read bandwidth of all cores and, with AMX, the tiles' FLOP/s
# (benches/gemm.rs).
cargo bench --bench gemm -- --bandwidth 2>/dev/null | grep '^{' |
  "$py" -c 'import json,sys
for line in sys.stdin:
    d = json.loads(line); d.update(label="hardware", bench="bandwidth" if d["row"] == "read bandwidth" else d["row"]); print(json.dumps(d))' >> "$out"

both siglip-b16-encode "$models/siglip-b16" --batch 1,8 --iters 3 -- --batch 1,8 --iters 3
both clip-b32-encode "$models/clip-b32" --batch 1,8 --iters 5 -- --batch 1,8 --iters 5
both gemma-100m "$models/gemma-100m" --prompt-len 64 --new-tokens 32 -- 64 32
both siglip-tiny-train "$models/siglip-tiny" --train --batch 32 --steps 30 -- --train --batch 32 --steps 30
both siglip-b16-train "$models/siglip-b16" --train --batch 8 --steps 4 -- --train --batch 8 --steps 4
both paligemma-3b "$models/paligemma-3b" --prompt-len 10 --new-tokens 32 -- 10 32
