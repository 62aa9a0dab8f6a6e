#!/usr/bin/env bash
# llama.cpp beside vlm-zoo on the Gemma decoder benchmarks (issue #29): builds llama.cpp from a
# pinned source, converts the random-weight bench models to GGUF (bf16, then Q8_0) with
# llama.cpp's own converter, and runs llama-bench and `vlm-zoo bench` alternately at equal
# prompt lengths (65 and 267 tokens, BOS included) and 32 new tokens. One JSON line per run is
# appended to OUT (so OUT may be bench_all.sh's file); then `python scripts/bench_table.py OUT`.
#
#   cargo build --release
#   bash scripts/bench_llama_cpp.sh OUT.jsonl [MODELS_DIR] [WORK_DIR]
#
# MODELS_DIR (default /tmp) holds the folders of scripts/make_bench_models.py: gemma-100m (made
# when missing) and gemma-2b (run only when its folder exists: ~5 GB, plus ~8 GB of GGUFs).
# WORK_DIR (default /tmp/llama.cpp-build) gets the source, the build and the GGUFs; each step
# is skipped when its output is there (delete a file to redo it).
# Environment: VLM_ZOO (default target/release/vlm-zoo), PYTHON (default .venv/bin/python, with
# scripts/requirements.txt: the converter needs torch, transformers, numpy, safetensors,
# sentencepiece and protobuf, gguf-py (taken from the source tree) pyyaml and tqdm, which come
# with transformers; cmake is pip-installed into it when none is on PATH), THREADS (default 2,
# llama.cpp's threads; vlm-zoo uses every core, so run on a machine with exactly THREADS cores or
# pin both with taskset), REPS (default 3, llama-bench repetitions), ONLY (default
# "gemma-100m gemma-2b", the models to run), JOBS (default 2, build jobs), PREPARE=1 (build and
# convert only, no runs: the slow steps, done before a quiet spell of the machine).
#
# Source pin: llama.cpp as vendored by the llama-cpp-python 0.3.36 sdist (pypi; github.com need
# not be reachable), checked by sha256. The sdist carries the submodule's git directory, so the
# commit is read from it and recorded in OUT's "setup" row (0c1e570... for this sdist).
set -euo pipefail
out=${1:?usage: bash scripts/bench_llama_cpp.sh OUT.jsonl [MODELS_DIR] [WORK_DIR]}
models=${2:-/tmp}
work=${3:-/tmp/llama.cpp-build}
bin=${VLM_ZOO:-target/release/vlm-zoo}
py=${PYTHON:-.venv/bin/python}
threads=${THREADS:-2}
reps=${REPS:-3}
only=${ONLY:-gemma-100m gemma-2b}
jobs=${JOBS:-2}
mkdir -p "$work"
[ -x "$bin" ] || { echo "no $bin: cargo build --release first" >&2; exit 1; }

# --- The pinned source ----------------------------------------------------------------------
sdist=llama_cpp_python-0.3.36.tar.gz
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$sdist
src=$work/llama_cpp_python-0.3.36/vendor/llama.cpp
if [ ! -f "$src/CMakeLists.txt" ]; then
  if [ ! -f "$work/$sdist" ]; then
    echo "== downloading $url" >&2
    # pypi.org/packages/<same path> serves the same file where files.pythonhosted.org is blocked.
    curl -fL -o "$work/$sdist.part" "$url" ||
      curl -fL -o "$work/$sdist.part" "https://pypi.org/packages/packages/${url#*/packages/}"
    mv "$work/$sdist.part" "$work/$sdist"
  fi
  echo "$sha256  $work/$sdist" | sha256sum -c - >&2
  tar -xzf "$work/$sdist" -C "$work"
fi
# One fix: GCC 12's _tile_loadconfig tells the compiler that ldtilecfg reads 8 bytes of the
# 64-byte tile configuration, so GCC drops the stores of the tile shapes and the first AMX tile
# load of ggml's Q8_0 matmul dies with SIGILL. A compiler barrier before it keeps the stores (the
# same code otherwise; harmless with other compilers).
amx=$src/ggml/src/ggml-cpu/amx/mmq.cpp
if ! grep -q 'vlm-zoo: ldtilecfg' "$amx"; then
  sed -i 's|^\( *\)_tile_loadconfig(&tc);|\1__asm__ __volatile__("" : : "r"(\&tc) : "memory");  // vlm-zoo: ldtilecfg reads all 64 bytes\n&|' "$amx"
  grep -q 'vlm-zoo: ldtilecfg' "$amx" || { echo "could not patch $amx" >&2; exit 1; }
fi
# The submodule's HEAD (its git dir is inside the sdist); without it the sha256 is the pin.
head_file=$work/llama_cpp_python-0.3.36/.git/modules/vendor/llama.cpp/HEAD
if [ -f "$head_file" ] && grep -Eq '^[0-9a-f]{40}$' "$head_file"; then
  commit=$(cat "$head_file")
  pin="llama.cpp $commit, as vendored by llama-cpp-python 0.3.36 (sdist sha256 $sha256)"
else
  commit=unknown
  pin="llama.cpp as vendored by llama-cpp-python 0.3.36 (sdist sha256 $sha256)"
fi
pin="$pin, with the GCC 12 ldtilecfg fix in ggml-cpu/amx/mmq.cpp"
echo "== $pin" >&2

# --- Build: only llama-bench and llama-quantize, for this CPU ---------------------------------
cmake=$(command -v cmake || true)
if [ -z "$cmake" ]; then
  cmake=$(dirname "$py")/cmake
  [ -x "$cmake" ] || "$py" -m pip install cmake >&2
fi
build=$work/build
if [ ! -f "$build/CMakeCache.txt" ]; then
  # GGML_NATIVE: -march=native (AVX512-BF16, VNNI and the AMX int8 path where the CPU has them).
  # No OpenSSL (this version's HTTPS option; LLAMA_CURL is gone), no tests, examples, server or
  # web UI: nothing is downloaded and nothing beyond a C++ compiler is needed. Static libraries
  # keep the two binaries self-contained.
  "$cmake" -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_CCACHE=OFF \
    > "$work/configure.log" 2>&1 || { tail -n 40 "$work/configure.log" >&2; exit 1; }
fi
echo "== building llama-bench and llama-quantize (log: $work/build.log)" >&2
"$cmake" --build "$build" --target llama-bench llama-quantize -j "$jobs" > "$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log" >&2; exit 1; }
lbench=$build/bin/llama-bench
lquant=$build/bin/llama-quantize

# --- One "setup" row: the CPU, its relevant features, the source pin ---------------------------
setup_row() {
  local cpu flags
  cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
  flags=$(grep -m 1 '^flags' /proc/cpuinfo || true)
  "$py" -c '
import json, sys
cpu, flags, pin, commit, sha, threads, reps = sys.argv[1:]
have = set(flags.split())
print(json.dumps({"label": "setup", "bench": "llama.cpp", "cpu": cpu,
                  **{f: f in have for f in ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni")},
                  "llama_cpp": pin, "llama_cpp_commit": commit, "sdist_sha256": sha,
                  "threads": int(threads), "reps": int(reps)}))' \
    "$cpu" "$flags" "$pin" "$commit" "$sha256" "$threads" "$reps" >> "$out"
}

# --- GGUFs -------------------------------------------------------------------------------------
# The converter wants a tokenizer.model; the bench folders have none (only shapes and the
# vocabulary size matter), so a sentencepiece model with exactly vocab_size pieces is written by
# hand: Gemma's <pad> <eos> <bos> <unk> at ids 0..3, the 256 byte pieces, then filler pieces. It
# goes into a folder of links to the model's files, never into the model folder itself.
hf_view() {  # hf_view MODEL_DIR VIEW_DIR
  local dir=$1 view=$2 f
  rm -rf "$view" && mkdir -p "$view"
  for f in "$dir"/*.json "$dir"/*.safetensors; do ln -s "$f" "$view/"; done
  "$py" - "$dir/config.json" "$view/tokenizer.model" <<'EOF'
import json, sys
from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2 as pb
cfg = json.load(open(sys.argv[1]))
n = cfg.get("text_config", cfg)["vocab_size"]
m = pb.ModelProto()
t = m.trainer_spec
t.model_type, t.vocab_size, t.byte_fallback = pb.TrainerSpec.BPE, n, True
t.pad_id, t.eos_id, t.bos_id, t.unk_id = 0, 1, 2, 3
t.pad_piece, t.eos_piece, t.bos_piece, t.unk_piece = "<pad>", "<eos>", "<bos>", "<unk>"
m.normalizer_spec.name, m.normalizer_spec.add_dummy_prefix = "identity", False
P = pb.ModelProto.SentencePiece
for piece, kind in [("<pad>", P.CONTROL), ("<eos>", P.CONTROL), ("<bos>", P.CONTROL), ("<unk>", P.UNKNOWN)]:
    m.pieces.add(piece=piece, score=0.0, type=kind)
for b in range(256):
    m.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=P.BYTE)
for i in range(n - len(m.pieces)):
    m.pieces.add(piece=f"\u2581t{i}", score=-float(i), type=P.NORMAL)
open(sys.argv[2], "wb").write(m.SerializeToString())
sp = SentencePieceProcessor(model_file=sys.argv[2])
assert (sp.vocab_size(), sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (n, 0, 1, 2, 3)
EOF
}
gguf() {  # gguf NAME DIR: makes $work/NAME-bf16.gguf and $work/NAME-q8_0.gguf
  local name=$1 dir=$2
  if [ ! -f "$work/$name-bf16.gguf" ]; then
    hf_view "$dir" "$work/$name-hf"
    echo "== converting $dir to $work/$name-bf16.gguf" >&2
    # gguf-py from the same source tree (the pypi gguf may lag the converter).
    PYTHONPATH=$src/gguf-py "$py" "$src/convert_hf_to_gguf.py" "$work/$name-hf" --outtype bf16 \
      --outfile "$work/$name-bf16.gguf.part" >&2
    mv "$work/$name-bf16.gguf.part" "$work/$name-bf16.gguf"
  fi
  # Q8_0 by llama-quantize from the bf16 file, the usual route (the converter's --outtype q8_0
  # would also do); the weights are random, only the format's speed matters.
  if [ ! -f "$work/$name-q8_0.gguf" ]; then
    "$lquant" "$work/$name-bf16.gguf" "$work/$name-q8_0.gguf.part" Q8_0 "$threads" >&2
    mv "$work/$name-q8_0.gguf.part" "$work/$name-q8_0.gguf"
  fi
}

# --- Runs --------------------------------------------------------------------------------------
llama() {  # llama NAME FORMAT PROMPT: llama-bench's prefill of PROMPT tokens and its decode of 32
  # tokens after PROMPT (-d: the KV cache first filled, untimed, like vlm-zoo's decode after its
  # prompt), as one row in bench_all.sh's schema.
  local name=$1 format=$2 p=$3 file=$work/$1-$2.gguf
  echo "== $name-p$p / llama.cpp $format" >&2
  cat "$file" > /dev/null  # every run starts with the file in the page cache
  local pp tg
  pp=$("$lbench" -m "$file" -p "$p" -n 0 -t "$threads" -r "$reps" -o jsonl | tail -n 1) ||
    { echo "llama-bench failed (exit $?) on $file" >&2; exit 1; }
  tg=$("$lbench" -m "$file" -p 0 -n 32 -d "$p" -t "$threads" -r "$reps" -o jsonl | tail -n 1) ||
    { echo "llama-bench failed (exit $?) on $file" >&2; exit 1; }
  "$py" -c '
import json, sys
label, bench, pp, tg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(json.dumps({"label": label, "bench": bench, "model_type": pp["model_type"],
                  "prompt_tokens": pp["n_prompt"], "prefill_s": pp["n_prompt"] / pp["avg_ts"],
                  "decode_tokens": tg["n_gen"], "decode_tok_s": tg["avg_ts"],
                  "prefill_tok_s": pp["avg_ts"], "prefill_tok_s_stddev": pp["stddev_ts"],
                  "decode_tok_s_stddev": tg["stddev_ts"], "decode_depth": tg["n_depth"],
                  "model_size": pp["model_size"], "n_threads": pp["n_threads"], "reps": len(pp["samples_ts"]),
                  "build_commit": pp["build_commit"], "cpu_info": pp["cpu_info"]}))' \
    "llama.cpp $format" "$name-p$p" "$pp" "$tg" >> "$out"
}
ours() {  # ours NAME DIR DTYPE PROMPT: `vlm-zoo bench` (its prompt is a BOS plus --prompt-len tokens)
  local name=$1 dir=$2 dtype=$3 p=$4
  echo "== $name-p$p / vlm-zoo flex $dtype" >&2
  cat "$dir"/*.safetensors > /dev/null
  local json
  json=$("$bin" bench --model "$dir" --device flex --dtype "$dtype" --prompt-len $((p - 1)) --new-tokens 32 | tail -n 1)
  "$py" -c '
import json, sys
d = json.loads(sys.argv[3])
d.update(label=sys.argv[1], bench=sys.argv[2], prefill_tok_s=d["prompt_tokens"] / d["prefill_s"])
print(json.dumps(d))' "vlm-zoo flex $dtype" "$name-p$p" "$json" >> "$out"
}

[ -n "${PREPARE:-}" ] || setup_row
for name in $only; do
  dir=$models/$name
  if [ ! -f "$dir/config.json" ]; then
    if [ "$name" = gemma-100m ]; then
      "$py" scripts/make_bench_models.py "$name" "$dir"
    else
      echo "== skipping $name: no $dir (python scripts/make_bench_models.py $name $dir)" >&2
      continue
    fi
  fi
  gguf "$name" "$dir"
  [ -z "${PREPARE:-}" ] || continue
  # Alternating, so that a slow spell of a shared machine hits both sides alike.
  for p in 65 267; do
    for pair in "bf16 bf16" "q8_0 q8"; do
      read -r format dtype <<< "$pair"
      llama "$name" "$format" "$p"
      ours "$name" "$dir" "$dtype" "$p"
    done
  done
done
