# Wave-4 GPU jobs (lead): run from the repository root on a lent GPU, after the carry calls.
# Usage: bash benchmarks/gpu_wave4.sh [JOB ...]  (default: all). Results under $OUT.
source benchmarks/gpu_jobs.sh
cli() { python3 -m app.cli "$@"; }
JOBS=("$@"); [ ${#JOBS[@]} -eq 0 ] && JOBS=(sinks act activity ctx playground)
for j in "${JOBS[@]}"; do
  case $j in
    sinks) job sinks96 120 cli sinks --device cuda --n-texts 96 --out "$OUT/sinks96" ;;
    act) job act_ref 420 cli act --device cuda --out "$OUT/act_ref" ;;
    activity) t0=$(date +%s); job activity 180 cli neurons activity --device cuda --max-texts 48 --out "$OUT/activity"
              echo "$(( $(date +%s) - t0 )) s on the GPU" > "$OUT/activity.seconds" ;;
    ctx) job ctx 300 cli contextualisation --device cuda --prefix 8 --steps 1500 --max-train 16384 --max-eval 4096 --batch-size 128 --out "$OUT/ctx" ;;
    playground) job playground 180 python3 -m benchmarks.bench_playground --device cuda --rounds 5 --out "$OUT/playground_gpu.md" ;;
    *) echo "unknown job $j" ;;
  esac
done
cat "$OUT/summary.md"
