#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU and no Rust toolchain: the CLI built beforehand with
#   cargo build --release --features cuda --config 'patch.crates-io.cubecl-llvm.path="cuda-offline/cubecl-llvm"'
#   strip target/release/vlm-zoo && mkdir -p .gpu && gzip -c target/release/vlm-zoo > .gpu/vlm-zoo.gz
# and carried as .gpu/ next to tests/fixtures. Checks every CLI path on --device cuda against the
# same binary on --device cpu (embeddings/logits within tolerance, generated ids exactly), bf16
# on cuda against f32 on cpu (within bf16's own noise), training and the demo on cuda, the
# benchmarks of the fixtures on cuda, and times a cold and a warm start (CubeCL's persistent
# kernel/autotune caches).
set -uo pipefail
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
BIN=/tmp/vlm-zoo
gunzip -c .gpu/vlm-zoo.gz > "$BIN" && chmod +x "$BIN"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
F=tests/fixtures
I=$F/images
fail=0

run() { # name, args...
  local name=$1; shift
  for dev in cpu cuda; do
    local t0=$EPOCHREALTIME
    if ! "$BIN" "$@" --json --device "$dev" > "$OUT/$name.$dev.json" 2> "$OUT/$name.$dev.err"; then
      echo "FAIL $name on $dev: $(tail -1 "$OUT/$name.$dev.err")"; fail=1
    fi
    echo "$name $dev $(python3 -c "print(round($EPOCHREALTIME - $t0, 2))") s" | tee -a "$OUT/times.txt"
  done
}

run siglip zero-shot --model $F/siglip-a --image $I/rgb_64x48.png --image $I/grey_40x40.png --text "a photo of a red circle" --text "a blue square on a white background"
run clip zero-shot --model $F/clip-a --image $I/rgb_64x48.png --image $I/rgba_50x30.png --text "a photo of a red circle" --text "two green triangles, side by side!"
run gemma2 generate --model $F/gemma2-a --prompt "a photo of a red circle" --prompt "two green triangles" --max-new-tokens 8
run paligemma generate --model $F/paligemma-a --image $I/rgb_64x48.png --prompt "caption en" --image $I/rgb_23x37.png --prompt "detect circle ; square" --max-new-tokens 6
run paligemma2 generate --model $F/paligemma2-a --image $I/rgb_64x48.png --prompt "caption en" --max-new-tokens 6

# bf16 on the GPU (weights and activations in bf16; norms and softmax in f32).
for name in siglip clip; do
  model=$F/$name-a
  [ $name = clip ] && imgs=(--image $I/rgb_64x48.png --image $I/rgba_50x30.png --text "a photo of a red circle" --text "two green triangles, side by side!")
  [ $name = siglip ] && imgs=(--image $I/rgb_64x48.png --image $I/grey_40x40.png --text "a photo of a red circle" --text "a blue square on a white background")
  "$BIN" zero-shot --model $model "${imgs[@]}" --json --device cuda --dtype bf16 > "$OUT/$name.bf16.json" 2> "$OUT/$name.bf16.err" \
    || { echo "FAIL $name bf16: $(tail -1 "$OUT/$name.bf16.err")"; fail=1; }
done
"$BIN" generate --model $F/paligemma2-a --image $I/rgb_64x48.png --prompt "caption en" --max-new-tokens 6 --json --device cuda --dtype bf16 \
  > "$OUT/paligemma2.bf16.json" 2> "$OUT/paligemma2.bf16.err" || { echo "FAIL paligemma2 bf16"; fail=1; }

python3 - "$OUT" <<'PY' || fail=1
import json, sys
out = sys.argv[1]
bad = 0
def flat(v):
    return [x for r in v for x in (r if isinstance(r, list) else [r])]
for name in ["siglip", "clip"]:
    a, b = (json.load(open(f"{out}/{name}.{d}.json")) for d in ("cpu", "cuda"))
    for k in ["image_embeds", "text_embeds", "logits_per_image", "probs"]:
        diff = max(abs(x - y) - 1e-4 * (1 + abs(x)) for x, y in zip(flat(a[k]), flat(b[k])))
        print(f"{name} {k}: cuda vs cpu excess over 1e-4+1e-4|ref| = {diff:.2e}")
        bad |= diff > 0
for name in ["gemma2", "paligemma", "paligemma2"]:
    a, b = (json.load(open(f"{out}/{name}.{d}.json")) for d in ("cpu", "cuda"))
    a, b = (x if isinstance(x, list) else [x] for x in (a, b))
    same = [x["token_ids"] == y["token_ids"] for x, y in zip(a, b)]
    print(f"{name}: generated ids equal on cuda and cpu: {same}")
    bad |= not all(same)
# bf16: 8 significant bits; held to 8 steps (8/256) of the f32 cpu values, logits relative to
# the largest logit (as tests/cli.rs holds the CPU's bf16).
for name in ["siglip", "clip"]:
    a, b = (json.load(open(f"{out}/{name}.{d}.json")) for d in ("cpu", "bf16"))
    for k in ["image_embeds", "text_embeds", "logits_per_image", "probs"]:
        scale = max(1.0, max(abs(x) for x in flat(a[k]))) if k == "logits_per_image" else 1.0
        diff = max(abs(x - y) for x, y in zip(flat(a[k]), flat(b[k])))
        ok = all(abs(x - y) <= 8 / 256 * (scale + abs(x)) for x, y in zip(flat(a[k]), flat(b[k])))
        print(f"{name} {k}: bf16 cuda vs f32 cpu max |diff| = {diff:.2e} ({'ok' if ok else 'OUTSIDE bf16 noise'})")
        bad |= not ok
a, b = (json.load(open(f"{out}/paligemma2.{d}.json")) for d in ("cpu", "bf16"))
print(f"paligemma2 bf16 cuda ids {b['token_ids']} vs f32 cpu {a['token_ids']}")
sys.exit(bad)
PY
[ $? -eq 0 ] || fail=1

# Training and the demo on the GPU (reduced sizes), and the fixture benchmarks.
"$BIN" bench --model $F/siglip-a --train --batch 4 --steps 3 --device cuda | tee "$OUT/bench-train-cuda.json" || { echo "FAIL train bench on cuda"; fail=1; }
"$BIN" demo --out "$OUT/demo" --train-images 64 --test-images 8 --epochs 1 --device cuda > "$OUT/demo.txt" 2>&1 \
  || { echo "FAIL demo on cuda: $(tail -1 "$OUT/demo.txt")"; fail=1; }
# Training on the GPU in f32 and bf16 mixed precision, with the same seed: the loss curves
# side by side with the CPU's (losses.csv of each); fine-tuning on cpu and cuda (losses.csv
# of each), and the server on cuda.
mkdir -p "$OUT/shapes"
printf '{"image": "%s", "caption": "a red circle"}\n{"image": "%s", "caption": "a grey square"}\n' \
  "$(realpath $I/rgb_64x48.png)" "$(realpath $I/grey_40x40.png)" > "$OUT/shapes/pairs.jsonl"
for i in $(seq 1 15); do sed -n 1,2p "$OUT/shapes/pairs.jsonl"; done > "$OUT/shapes/many.jsonl"
for dev_prec in "cpu f32" "cuda f32" "cuda bf16"; do
  set -- $dev_prec
  "$BIN" train --arch siglip --data "$OUT/shapes/many.jsonl" --out "$OUT/train-$1-$2" --epochs 2 --batch-size 8 \
    --val-fraction 0 --device $1 --precision $2 > "$OUT/train-$1-$2.txt" 2>&1 || { echo "FAIL train $1 $2"; fail=1; }
done
for i in $(seq 1 8); do
  printf '{"image": "%s", "prefix": "detect circle", "suffix": "<loc0100><loc0200><loc0300><loc0400> circle"}\n' "$(realpath $I/rgb_64x48.png)"
done > "$OUT/shapes/rows.jsonl"
for dev in cpu cuda; do
  "$BIN" finetune --model $F/paligemma-a --data "$OUT/shapes/rows.jsonl" --out "$OUT/finetune-$dev" --device $dev \
    --train all --epochs 2 --batch-size 4 --lr 3e-3 > "$OUT/finetune-$dev.txt" 2>&1 || { echo "FAIL finetune on $dev"; fail=1; }
done
"$BIN" serve --model $F/paligemma-a --device cuda --port 18181 > "$OUT/serve-cuda.txt" 2>&1 &
SERVE=$!; sleep 20
curl -s -X POST localhost:18181/v1/generate -H 'content-type: application/json' \
  -d "{\"prompt\": \"caption en\", \"image\": \"$(base64 -w0 $I/rgb_64x48.png)\", \"max_tokens\": 6}" \
  | tee "$OUT/serve-cuda.json" | grep -q token_ids || { echo "FAIL serve on cuda"; fail=1; }
kill -TERM $SERVE; wait $SERVE
for m in gemma2-a paligemma2-a; do
  for dt in f32 bf16; do
    "$BIN" bench --model $F/$m --device cuda --dtype $dt --prompt-len 16 --new-tokens 32 | tee -a "$OUT/bench-cuda.jsonl" || fail=1
  done
done
"$BIN" bench --model $F/clip-a --device cuda --batch 1,8,64 --iters 10 | tee -a "$OUT/bench-cuda.jsonl" || fail=1

# Cold vs warm start: the second run reuses compiled kernels and autotune results.
for i in 1 2; do
  t0=$EPOCHREALTIME
  "$BIN" generate --model $F/paligemma-a --image $I/rgb_64x48.png --prompt "caption en" --max-new-tokens 6 --device cuda > /dev/null 2>&1
  echo "paligemma start $i: $(python3 -c "print(round($EPOCHREALTIME - $t0, 2))") s" | tee -a "$OUT/times.txt"
done
echo "gpu-check: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"
exit $fail
