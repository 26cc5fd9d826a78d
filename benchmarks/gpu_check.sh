#!/usr/bin/env bash
# One device call that re-checks the Triton kernels (limits add up to 580 s, under 10 minutes
# with the setup): GPU tests of SSD and DMAttn, then the SSD benchmark's gate and the DMAttn
# decode timing, each with its own time limit so that one slow step cannot take the others'
# results with it. Everything lands in $OUT.
#
#   device run (carry .whl with the anchors' wheels, see docs/benchmarks/ssd.md):
#       bash benchmarks/gpu_check.sh
#
# Times measured on the H200 (2026-11-29, third session), first calls compile from scratch:
# Tests run verbose with a traceback dump after 120 s in one test (a cut step then shows where).
# - SSD GPU tests: the four bf16 loop tests took most of 140 s, then the compile test was cut;
#   alone it takes 66 s (almost all Triton compile + autotune). Limit 240 s.
# - DMAttn GPU tests: the four brute-force tests fit in 100 s, then the compile tests were cut;
#   alone they take 18 s + 24 s. Limit 150 s.
# - bench_ssd --quick --no-fla: the g = h gate printed within 160 s, then the RoPE r = 32 case
#   (n 128) compiled for minutes in the old lo / hi / rest layout (gone since d14a77c; the new
#   layout's first call at B4 T1024 r 64 compiled in 30 s). Limit 140 s: enough for the gate;
#   the timings need a call of their own (`bench_ssd.py --quick --no-fla`, about 5 minutes).
# - bench_dmattn: train + decode took 98 s after imports; decode alone (what this call checks:
#   the direct launches) is not timed separately. Limit 50 s. For the training shapes run
#   `--sections train,decode --quick` in a call of its own.
# fla is left out: its first call autotuned for more than three minutes there.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT/ssd" "$OUT/dm"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"

step() {  # step SECONDS LOG command...: run with a time limit, keep the log, print its tail
    local limit=$1 log=$2
    shift 2
    timeout "$limit" "$@" >"$log" 2>&1
    echo "== $* -> exit $? (log $log)"
    grep -v "DEBUG\|Warning\|warnings.warn" "$log" | tail -25
}

step 240 "$OUT/ssd_tests.log" python3 -m pytest -v --durations=5 -o faulthandler_timeout=120 -m gpu tests/kernels/ssd tests/blocks/test_ssd_block.py -p no:cacheprovider
step 150 "$OUT/dm_tests.log" python3 -m pytest -v --durations=5 -o faulthandler_timeout=120 -m gpu tests/kernels/dmattn -p no:cacheprovider
step 140 "$OUT/ssd/log" python3 benchmarks/bench_ssd.py --quick --no-fla --out "$OUT/ssd"
step 50 "$OUT/dm/log" python3 benchmarks/bench_dmattn.py --out "$OUT/dm" --sections decode --quick
