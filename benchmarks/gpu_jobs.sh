# The lead's GPU jobs of wave 4, one call on a lent GPU after the carry calls (see
# benchmarks/gpu_env.sh). Each job has its own time limit; logs and results go to $OUT.
source benchmarks/gpu_env.sh
mkdir -p "$OUT"
job() {  # job NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "| $name | rc $? | $(( $(date +%s) - t0 )) s |" | tee -a "$OUT/summary.md"
}
