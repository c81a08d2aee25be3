# Wave-5 GPU jobs: run from the repository root on a lent GPU after the carry calls
# (benchmarks/gpu_env.sh). Usage: bash benchmarks/gpu_wave5.sh JOB [JOB ...]; results under $OUT,
# one log per job, a summary table last.
source benchmarks/gpu_jobs.sh
export PYTHONUNBUFFERED=1
for j in "$@"; do
  case $j in
    smoke) job smoke 120 python3 -c "import torch; from probes.models import load; m = load('smollm2-135m', device='cuda').model; print(torch.cuda.get_device_name(), m.cfg.n_layers)" ;;
    # issue 11: nodes + edges (path patching among the top-20 heads, query vs key/value split), 4 tasks, 32 prompts; ~150 s expected
    circuits) job circuits 300 python3 -m benchmarks.bench_circuits --device cuda --n-prompts 32 --batch-size 32 --edge-top-n 20 --edge-inputs qkv,q,kv --sae-diagnostics --out "$OUT/gpu_circuits.md" ;;
    *) echo "unknown job $j" ;;
  esac
done
cat "$OUT/summary.md"
