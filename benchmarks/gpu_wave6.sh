# Wave-6 GPU jobs: run from the repository root on a lent GPU after the carry calls
# (benchmarks/gpu_env.sh). Usage: bash benchmarks/gpu_wave6.sh JOB [JOB ...]; results under $OUT,
# one log per job, a summary table last. Expected seconds on one H100/H200 in each comment.
source benchmarks/gpu_jobs.sh
export PYTHONUNBUFFERED=1
for j in "$@"; do
  case $j in
    smoke) job smoke 120 python3 -c "import torch; from probes.models import load; m = load('smollm2-135m', device='cuda').model; print(torch.cuda.get_device_name(), m.cfg.n_layers)" ;;
    # issue 9: IsoScore on 100k points and the all-layer scores at 3 sizes (batch 8 and 32), the
    # streaming state packed, no host syncs in the hooks, eigendecompositions on the GPU (~60-90 s);
    # then where the time goes: streaming pass vs fixed part, host syncs counted during the pass,
    # eigh of 64 × 576² on the host CPU vs the GPU, scores with CPU vs GPU linear algebra (~30-60 s)
    iso)
      job iso 300 python3 -m benchmarks.bench_isotropy --device cuda --rounds 3 --parts isoscore,layers --sizes 24x128,96x256,96x256b32 --out "$OUT/iso.md"
      job iso_profile 240 python3 -m benchmarks.profile_isotropy --device cuda --size 96x256b32 --out "$OUT/iso_profile.md" ;;
    # issue 9: contrastive search vs greedy on the GPU: 128 new tokens after a 16-token prompt (k = 4 and 8,
    # nucleus), then 64 after 1,000 and 4,000 tokens (k = 4: the shared-row pass and the k-row fallback) (~150-240 s)
    dec) job dec 420 python3 -m benchmarks.bench_isotropy --device cuda --rounds 2 --parts decoding --decode-tokens 128 --decode-contexts 1000:64,4000:64 --out "$OUT/dec.md" ;;
    *) echo "unknown job $j" ;;
  esac
done
cat "$OUT/summary.md"
