# Wave-4 GPU jobs: run from the repository root on a lent GPU after the carry calls
# (benchmarks/gpu_env.sh). Usage: bash benchmarks/gpu_wave4.sh JOB [JOB ...]; results under $OUT,
# one log per job, a summary table last.
source benchmarks/gpu_jobs.sh
export PYTHONUNBUFFERED=1
for j in "$@"; do
  case $j in
    smoke) job smoke 120 python3 -c "import torch; from probes.models import load; m = load('smollm2-135m', device='cuda').model; print(torch.cuda.get_device_name(), m.cfg.n_layers)" ;;
    sinks) job sinks96 120 python3 -m app.cli sinks --device cuda --n-texts 96 --out "$OUT/sinks96" ;;
    act) job act_ref 500 python3 -m app.cli act --device cuda --out "$OUT/act_ref" ;;
    ctx) job ctx 240 python3 -m app.cli contextualisation --device cuda --prefix 8 --steps 1500 --max-train 16384 --max-eval 4096 --batch-size 128 --out "$OUT/ctx" ;;
    playground) job playground 120 python3 -m benchmarks.bench_playground --device cuda --rounds 5 --out "$OUT/playground_gpu.md" ;;
    retrieval) job retrieval 420 python3 -m benchmarks.bench_retrieval --device cuda --full-grid --no-baseline --baseline-tests 3 --out "$OUT/gpu_retrieval.md" --verbose ;;
    masking) job masking 300 python3 -m benchmarks.bench_retrieval --device cuda --lengths 1000,2000 --depths 0.1,0.5,0.9 --needles 0,1,2 --no-baseline --masking --masking-lengths 1000,2000 --out "$OUT/gpu_masking.md" ;;
    razor) job razor 400 python3 -m benchmarks.bench_razor --device cuda --lengths 1000,2000,4000 --depths 0,0.5,1 --needles 0,1,2 --detect-lengths 1000,2000 --kv-heads 0,3,9,18,45,90 --window 64 --out "$OUT/gpu_razor.md" ;;
    faith) job faith 240 python3 -m benchmarks.bench_faithfulness --device cuda --n-heads 10 --detect-lengths 1000,2000 --out "$OUT/gpu_faithfulness.md" ;;
    iso) job iso 240 python3 -m benchmarks.bench_isotropy --device cuda --rounds 3 --sizes 24x128,96x256 --out "$OUT/gpu_isotropy.md" ;;
    circuits) job circuits 400 python3 -m benchmarks.bench_circuits --device cuda --n-prompts 32 --shared --out "$OUT/gpu_circuits.md" ;;
    *) echo "unknown job $j" ;;
  esac
done
cat "$OUT/summary.md"
