#!/usr/bin/env bash
# One device call that re-checks the Triton kernels: GPU tests of SSD and DMAttn, then the DMAttn
# decode timing, each with its own time limit so that one slow step cannot take the others'
# results with it (limits add up to 570 s). Everything lands in
# $OUT. The SSD benchmark needs calls of its own (bench_ssd.py --shapes / --sections).
#
#   device run (carry .whl with the anchors' wheels, see docs/benchmarks/ssd.md):
#       bash benchmarks/gpu_check.sh
#
# Times measured on the H200 (fourth session, first calls compile from scratch); tests run
# verbose with a traceback dump after 120 s in one test (a cut step then shows where):
# - SSD GPU tests: 7 tests in ~174 s (fifth session); 243 s in the sixth, when every autotuner
#   had one more (register-capped, since dropped) config to compile and time; 173 s on an H100
#   (seventh session). Limit 250 s.
# - DMAttn GPU tests: 6 tests in 134 s and 120 s (fourth, fifth sessions); 178 s with the capped
#   configs (limit then 220 s, now 130 s without the Stack test). With them since the seventh session: the compiled varlen tables and
#   the compiled packed Stack (tests/test_stack.py; ~35 s to compile on CPU), not yet timed here.
# - Tenth session (an H100): SSD GPU tests 8 passed in 187 s. The DMAttn tests reached the
#   packed-Stack compile test before their 220 s limit ran out; that test alone then ran past
#   150 s compiling (it now pins kernels to one config, so Inductor times none), so it has a
#   step of its own. Limits now 250 + 130 + 100 + 40 + 50 s.
# - bench_dmattn decode: well under its limit; select (the window selection alone, every
#   shape) finished within its 60 s limit in the tenth session.
# fla is left out: its first call autotuned for more than three minutes there.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT/dm" "$OUT/sel"
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

step 250 "$OUT/ssd_tests.log" python3 -m pytest -v --durations=5 -o faulthandler_timeout=120 -m gpu tests/kernels/ssd tests/blocks/test_ssd_block.py -p no:cacheprovider
step 130 "$OUT/dm_tests.log" python3 -m pytest -v --durations=5 -o faulthandler_timeout=120 -m gpu tests/kernels/dmattn tests/kernels/test_varlen_tables.py -p no:cacheprovider
step 100 "$OUT/stack_tests.log" python3 -m pytest -v --durations=5 -o faulthandler_timeout=90 -m gpu tests/test_stack.py -p no:cacheprovider
step 40 "$OUT/dm/log" python3 benchmarks/bench_dmattn.py --out "$OUT/dm" --sections decode --quick
step 50 "$OUT/sel/log" python3 benchmarks/bench_dmattn.py --out "$OUT/sel" --sections select
