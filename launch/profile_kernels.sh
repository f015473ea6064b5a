#!/usr/bin/env bash
# Device time per CUDA kernel of one `hsa bench` run, from Nsight Compute: every matching
# launch is timed (gpu__time_duration.sum), summed by kernel and divided by the number of
# times the bench runs its step, then printed largest first. Use it to see which kernels a
# method's time in `hsa bench train`'s breakdown is made of (docs/PERF.md version 24 found
# 9.9 ms a step of operand rounding this way).
#
#   bash launch/profile_kernels.sh BENCH [REGEX] [RUNS]
#     BENCH  train | hsa | swa (the build in build/ is used; run launch/gpu_check.sh first)
#     REGEX  kernel names to time (ncu -k regex:...); default: every kernel (slow for train)
#     RUNS   how many steps the bench executes in total, to report per step; default 7 for
#            train (1 warm-up + 3 timed + 3 with per-call events), 1 otherwise
#   NCU_CSV=file: aggregate an earlier `ncu --csv` output instead of running ncu.
#
# ncu replays each launch alone with its caches flushed, so a kernel that reuses data
# across launches reads slower here than inside the step: the figures are upper bounds.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:?usage: bash launch/profile_kernels.sh train|hsa|swa [REGEX] [RUNS]}
regex=${2:-}
case "$bench" in
  train) runs=${3:-7} ;;
  hsa | swa) runs=${3:-1} ;;
  *) echo "profile_kernels: unknown bench '$bench', expected train, hsa or swa" >&2; exit 2 ;;
esac
csv=${NCU_CSV:-}
if [ -z "$csv" ]; then
  command -v ncu > /dev/null || { echo "profile_kernels: ncu (Nsight Compute) is not installed" >&2; exit 1; }
  [ -x build/launch/hsa ] || { echo "profile_kernels: build/launch/hsa is missing; build first" >&2; exit 1; }
  csv=$(mktemp)
  trap 'rm -f "$csv" "$csv.err"' EXIT
  filter=()
  [ -n "$regex" ] && filter=(-k "regex:$regex")
  if ! ncu --csv --metrics gpu__time_duration.sum "${filter[@]}" ./build/launch/hsa bench "$bench" > "$csv" 2> "$csv.err"; then
    echo "profile_kernels: ncu failed: $(tail -1 "$csv.err")" >&2
    exit 1
  fi
fi
python3 - "$csv" "$runs" <<'EOF'
import collections, csv, sys

rows = list(csv.reader(open(sys.argv[1], errors="replace")))
runs = float(sys.argv[2])
to_ms = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "s": 1e3, "second": 1e3}
total, calls = collections.defaultdict(float), collections.Counter()
columns = None
for row in rows:  # the bench's own output is interleaved: rows before the CSV header are skipped
    if "Kernel Name" in row and "Metric Value" in row:
        columns = {name: i for i, name in enumerate(row)}
        continue
    if columns is None or len(row) < len(columns):
        continue
    name = row[columns["Kernel Name"]].split("(")[0]
    unit = row[columns["Metric Unit"]] if "Metric Unit" in columns else "ns"
    try:
        value = float(row[columns["Metric Value"]].replace(",", ""))
    except ValueError:
        continue
    total[name] += value * to_ms.get(unit, 1e-6)
    calls[name] += 1
if not total:
    sys.exit("profile_kernels: no kernel timings in the ncu output (wrong regex, or ncu failed)")
print(f"| kernel | ms per step | launches per step |\n|---|---|---|")
for name, ms in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"| {name} | {ms / runs:.3f} | {calls[name] / runs:.1f} |")
print(f"| all listed | {sum(total.values()) / runs:.3f} | {sum(calls.values()) / runs:.1f} |")
EOF
