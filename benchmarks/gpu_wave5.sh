# Wave-5 GPU jobs: run from the repository root on a lent GPU after the carry calls
# (benchmarks/gpu_env.sh). Usage: bash benchmarks/gpu_wave5.sh JOB [JOB ...]; results under $OUT,
# one log per job, a summary table last. Expected seconds on one H200 in each comment.
source benchmarks/gpu_jobs.sh
export PYTHONUNBUFFERED=1
for j in "$@"; do
  case $j in
    # issue 8 item 5: DuoAttention gates at a larger size (≈ 150 s: load + ≤ 170 s of training, stopped by its budget)
    duo) job duo 240 python3 -m benchmarks.bench_duo --device cuda --steps 400 --min-length 1000 --max-length 4000 --n-passkeys 5 --passkey-words 16 --n-sink 64 --window 256 --lr 0.05 --eval-samples 8 --time-budget 170 --save "$OUT/duo_gates" --out "$OUT/gpu_duo.md" --verbose ;;
    # optional, after duo: NIAH accuracy vs KV memory with the KV heads ranked by those gates (≈ 150 s)
    duo_kv) job duo_kv 240 python3 -m app.cli kv-curve --device cuda --heads-from "$OUT/duo_gates" --lengths 1000,2000 --depths 0.25,0.75 --needles 0,1,2 --kv-heads 0,9,18,45 --window 64 --out "$OUT/duo_kv_curve" ;;
    smoke) job smoke 120 python3 -c "import torch; from probes.models import load; m = load('smollm2-135m', device='cuda').model; print(torch.cuda.get_device_name(), m.cfg.n_layers)" ;;
    # issue 11: nodes + edges (path patching among the top-20 heads, query vs key/value split), 4 tasks, 32 prompts; ~150 s expected
    circuits) job circuits 300 python3 -m benchmarks.bench_circuits --device cuda --n-prompts 32 --batch-size 32 --edge-top-n 20 --edge-inputs qkv,q,kv --sae-diagnostics --out "$OUT/gpu_circuits.md" ;;
    # issue 8: the 600-test reference grid, batched scan (48 tests per batch); expected ~100-150 s (target < 180 s)
    retrieval) job retrieval 400 python3 -m benchmarks.bench_retrieval --device cuda --full-grid --batch-size 48 --baseline-tests 1 --per-test 2 --out "$OUT/gpu_retrieval.md" --verbose ;;
    # issue 8: masking curves, k = 0,2,5,10,20,40, 5 random draws, 18 tests per configuration (all configurations batched); expected ~60-120 s
    masking) job masking 300 python3 -m benchmarks.bench_retrieval --device cuda --lengths 1000,2000 --depths 0.1,0.5,0.9 --needles 0,1,2 --batch-size 48 --baseline-tests 0 --masking --ks 0,2,5,10,20,40 --seeds 5 --out "$OUT/gpu_masking.md" --verbose ;;
    # issue 8: RazorAttention KV-memory vs NIAH accuracy, 27 tests × 13 policies (rows of one batch per needle × length); expected ~90-150 s
    razor) job razor 300 python3 -m benchmarks.bench_razor --device cuda --lengths 1000,2000,4000 --depths 0,0.5,1 --needles 0,1,2 --detect-lengths 1000,2000 --kv-heads 0,3,9,18,45,90 --window 64 --batch-size 48 --rows 48 --out "$OUT/gpu_razor.md" --verbose ;;
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
