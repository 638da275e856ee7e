#!/usr/bin/env bash
# One GPU-machine call that measures agentcore with llama.cpp in the same run (BENCHMARKS.md's
# method). Run there from the repository root, with `.whl` (bench/device/wheels.sh) and `.peers`
# (a copy of ../shared/peers: build_llama_bench.sh and the llama.cpp tarball) carried:
#   bash bench/device/run.sh SHA [STEP ...]
# Steps, in the order given (default: tests decode): tests (test_ops_cuda.py -k "$TESTS_K",
# default decode attention against NumPy), suite (the whole GPU suite, ~190 s), ab
# (attention_ab.py new 65,4096,32768), fuse (decode_ab.py: quant_x launches against fused
# output quantization, 8B and SmolLM2 at 64 and 32K, both KV dtypes), verify (prompt-lookup
# drafts on the CUDA decoder: tests/test_gpu_lookup.py, then verify_ab.py's ms a verify of 2, 4
# and 8 tokens against a graph step, VERIFY_MODELS at VERIFY_CTX), lookup (the public-path
# figure: `agentcore.bench lookup --device cuda` on the real SmolLM2, carried in two halves:
# bench/device/model_parts.sh), decode (8B and
# SmolLM2 at 64 and 32K, both KV dtypes), prefill (8B, 512 and 8K), cache (8B restore tiers at
# 32K). llama.cpp builds detached from the start (~335 s on 16 cores): decode and prefill
# first wait for it (the bench itself would, inside its step's limit), so put the steps that
# need no peer first (tests beside the build took over 120 s, 50 s alone, at 12 workers).
# Each step is cut at STEP_S seconds (default 200); no step starts past BUDGET_S (540).
# Output lands in $OUT. Knobs: NO_PEER=1 (no llama.cpp build); KV_DTYPES (decode's, default
# "q8_0 float16", an equal share of its limit each), DECODE_MODELS, DECODE_CTX; FUSE_MODELS,
# FUSE_CTX, FUSE_KV, FUSE_VARIANTS (the fuse step's); SWITCHES (below).
set -u
SHA=${1:?git sha}; shift; STEPS=${*:-tests decode}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; T0=$(date +%s)
el() { echo "## t=$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
LB=/tmp/llama.cpp/bin/llama-bench
[ -x $LB ] || [ -n "${NO_PEER:-}" ] || (setsid bash .peers/build_llama_bench.sh .peers/llama.cpp-src.tar.xz /tmp/llama.cpp >/dev/null 2>&1 &)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# SWITCHES (e.g. "fuse_quant_attn=0"): CudaOps switches the benches run with (bench_with.py);
# SWITCHES=auto-fuse sets the fuse_quant ones to the winner of this call's fuse step at ctx 64.
BENCH=(python3 bench/device/bench_with.py SWITCHES_HERE -- gpu --git-sha "$SHA" --llama-bench "$LB")
fuse_winner() {  # the switches of the fastest fuse-ab variant at ctx 64 (mean over its runs)
  python3 - "$OUT/fuse-ab.jsonl" <<'PY'
import json, sys, collections
keys = ("fuse_quant_attn", "fuse_quant_ffn")
ms = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["ctx"] == 64:
        ms[tuple(r[k] for k in keys)].append(r["ms_per_token"])
best = min(ms, key=lambda k: sum(ms[k]) / len(ms[k]))
print(" ".join(f"{k}={int(v)}" for k, v in zip(keys, best)))
PY
}
wait_peer() {  # the benches that quote llama.cpp: wait for its build while 150 s are left
  while [ ! -e /tmp/llama.cpp/status ] && [ $(( ${BUDGET_S:-540} - ($(date +%s) - T0) )) -gt 150 ]; do sleep 5; done
  cat /tmp/llama.cpp/status 2>/dev/null || echo "llama.cpp not built yet"
}
for s in $STEPS; do
  case $s in decode|prefill) wait_peer
    sw=${SWITCHES:-}; [ "$sw" = auto-fuse ] && sw=$(fuse_winner) && echo "switches: $sw"
    BENCH=("${BENCH[@]/SWITCHES_HERE/$sw}") ;; esac
  left=$(( ${BUDGET_S:-540} - ($(date +%s) - T0) )); [ $left -gt 30 ] || { el "out of time before $s"; break; }
  lim=$(( left < ${STEP_S:-200} ? left : ${STEP_S:-200} )); el "$s (limit ${lim}s)"
  case $s in
    tests) timeout $lim python3 -m pytest -q -n 12 -p no:cacheprovider tests/test_ops_cuda.py -k "${TESTS_K:-attn or attention}" \
             >"$OUT/tests.log" 2>&1 ;;
    suite) timeout $lim python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_ops_cuda.py tests/test_ops_cuda_decode.py \
             tests/test_gpu_local_engine.py tests/test_gpu_deepseek2.py tests/test_cuda_sampler.py >"$OUT/suite.log" 2>&1 ;;
    fuse) timeout $lim python3 bench/experiments/decode_ab.py ${FUSE_MODELS:-llama3-8b-q4_k,smollm2-135m} ${FUSE_CTX:-64,32768} \
            --kv=${FUSE_KV:-float16,q8_0} --variants=${FUSE_VARIANTS:-unfused,attn,ffn,fused,unfused,fused} --git-sha="$SHA" >"$OUT/fuse-ab.jsonl" 2>"$OUT/fuse-ab.err" ;;
    ab) timeout $lim python3 bench/experiments/attention_ab.py new 65,4096,32768 >"$OUT/ab.jsonl" 2>"$OUT/ab.err" ;;
    lookup) m=/tmp/smollm2.gguf  # the real SmolLM2 from its two carried halves (bench/device/model_parts.sh)
            cat .models-a/smollm2.part-a .models-b/smollm2.part-b > $m 2>/dev/null
            if [ "$(sha256sum $m | cut -c1-64)" = "$(python3 -c 'from agentcore.model_cache import KNOWN_MODELS as K; print(K["smollm2"].sha256)')" ]; then
              timeout $lim python3 -m agentcore.bench lookup --device cuda --model $m --out "$OUT/lookup" 2>"$OUT/lookup.err" >/dev/null
            else echo "lookup: no real SmolLM2 here (carry .models-a, then .models-b)"; fi ;;
    verify) timeout $(( lim / 2 )) python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_gpu_lookup.py >"$OUT/verify-tests.log" 2>&1
            timeout $(( lim / 2 )) python3 bench/experiments/verify_ab.py ${VERIFY_MODELS:-llama3-8b-q4_k,smollm2-135m} ${VERIFY_CTX:-64,32768} \
              --git-sha="$SHA" >"$OUT/verify-ab.jsonl" 2>"$OUT/verify-ab.err" ;;
    decode) n_kv=$(echo ${KV_DTYPES:-q8_0 float16} | wc -w)
            for kv in ${KV_DTYPES:-q8_0 float16}; do timeout $(( lim / n_kv )) "${BENCH[@]}" --only decode --models ${DECODE_MODELS:-llama3-8b-q4_k,smollm2-135m} \
              --contexts ${DECODE_CTX:-64,32768} --kv-dtype $kv --out "$OUT/decode-$kv" 2>"$OUT/decode-$kv.err" >/dev/null; done ;;
    prefill) timeout $lim "${BENCH[@]}" --only prefill --models llama3-8b-q4_k --contexts 512,8192 --out "$OUT/prefill" 2>"$OUT/prefill.err" >/dev/null ;;
    cache) timeout $lim python3 -m agentcore.bench gpu --git-sha "$SHA" --only cache --models llama3-8b-q4_k --contexts 32768 \
             --out "$OUT/cache" 2>"$OUT/cache.err" >/dev/null ;;
    *) echo "unknown step $s" ;;
  esac
  echo "rc=$?"; tail -n 2 "$OUT"/*.log 2>/dev/null | tail -n 1
done
el done
