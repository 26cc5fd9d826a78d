#!/usr/bin/env bash
# One device call that re-checks and re-times the Triton kernels (about 9 minutes on the H200):
# GPU tests of SSD and DMAttn, then the SSD and DMAttn benchmarks, each with its own time limit
# so that one slow step cannot take the others' results with it. Everything lands in $OUT.
#
#   device run (carry .whl with the anchors' wheels, see docs/benchmarks/ssd.md):
#       bash benchmarks/gpu_check.sh
#
# Times measured on the H200 (2026-11-29): SSD GPU tests ~110 s, DMAttn compile tests ~50 s,
# bench_ssd --quick --no-fla ~130 s, bench_dmattn correct+train ~240 s. fla is left out: its
# first call autotuned for more than three minutes there.
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

step 140 "$OUT/ssd_tests.log" python3 -m pytest -q -m gpu tests/kernels/ssd tests/blocks/test_ssd_block.py -p no:cacheprovider
step 100 "$OUT/dm_tests.log" python3 -m pytest -q -m gpu tests/kernels/dmattn -p no:cacheprovider
step 160 "$OUT/ssd/log" python3 benchmarks/bench_ssd.py --quick --no-fla --out "$OUT/ssd"
step 170 "$OUT/dm/log" python3 benchmarks/bench_dmattn.py --out "$OUT/dm" --sections train,decode --quick
