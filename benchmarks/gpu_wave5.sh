# Wave-5 GPU jobs: run from the repository root on a lent GPU after the carry calls
# (benchmarks/gpu_env.sh). Usage: bash benchmarks/gpu_wave5.sh JOB [JOB ...]; results under $OUT,
# one log per job, a summary table last. Expected seconds on one H200 in each comment.
source benchmarks/gpu_jobs.sh
export PYTHONUNBUFFERED=1
for j in "$@"; do
  case $j in
    # issue 9: IsoScore on 100k points, all-layer scores at 3 sizes (batch 8 and 32), contrastive
    # search vs greedy (128 tokens, k = 4 and 8) — ~90-120 s
    iso) job iso 200 python3 -m benchmarks.bench_isotropy --device cuda --rounds 3 --sizes 24x128,96x256,96x256b32 --decode-tokens 128 --out "$OUT/gpu_isotropy.md" ;;
    # issue 9: greedy / nucleus / contrastive search on 8 prose prefixes × 128 new tokens:
    # rep-2/3/4, diversity, isotropy of the generations' final-layer states — ~60-90 s
    isodecode) job isodecode 120 python3 -m app.cli isotropy-decoding --device cuda --n-prompts 8 --max-new-tokens 128 --out "$OUT/isodecode" ;;
    *) echo "unknown job $j" ;;
  esac
done
cat "$OUT/summary.md"
