# Wave-5 GPU jobs: run from the repository root on a lent GPU after the carry calls
# (benchmarks/gpu_env.sh). Usage: bash benchmarks/gpu_wave5.sh JOB [JOB ...]; results under $OUT,
# one log per job, a summary table last. Expected seconds on one H200 in the comments.
source benchmarks/gpu_jobs.sh
export PYTHONUNBUFFERED=1
for j in "$@"; do
  case $j in
    # issue 8: the 600-test reference grid, batched scan (48 tests per batch); expected ~100-150 s (target < 180 s)
    retrieval) job retrieval 400 python3 -m benchmarks.bench_retrieval --device cuda --full-grid --batch-size 48 --baseline-tests 1 --per-test 2 --out "$OUT/gpu_retrieval.md" --verbose ;;
    # issue 8: masking curves, k = 0,2,5,10,20,40, 5 random draws, 18 tests per configuration (all configurations batched); expected ~60-120 s
    masking) job masking 300 python3 -m benchmarks.bench_retrieval --device cuda --lengths 1000,2000 --depths 0.1,0.5,0.9 --needles 0,1,2 --batch-size 48 --baseline-tests 0 --masking --ks 0,2,5,10,20,40 --seeds 5 --out "$OUT/gpu_masking.md" --verbose ;;
    # issue 8: RazorAttention KV-memory vs NIAH accuracy, 27 tests × 13 policies (rows of one batch per needle × length); expected ~90-150 s
    razor) job razor 300 python3 -m benchmarks.bench_razor --device cuda --lengths 1000,2000,4000 --depths 0,0.5,1 --needles 0,1,2 --detect-lengths 1000,2000 --kv-heads 0,3,9,18,45,90 --window 64 --batch-size 48 --rows 48 --out "$OUT/gpu_razor.md" --verbose ;;
    *) echo "unknown job $j" ;;
  esac
done
cat "$OUT/summary.md"
