"""Nsight Compute's warp-stall samples of one kernel, summed per Python source line.

    python benchmarks/ncu_source_lines.py SASS_CSV KERNEL LISTING [--top 20]

SASS_CSV: `ncu -i REPORT --page source --csv --print-source sass` (per-instruction samples of
every kernel in the report). LISTING: `nvdisasm -g -c KERNEL.cubin` of the same binary (Triton's
cubin from its cache on the GPU machine, or compiled anywhere for sm_90a with the launch's
constexprs, warps, stages, the 16-divisibility of its arguments and its int arguments equal to 1
as constants, as Triton specializes them; nvdisasm ships with Triton).
ncu's own CUDA-source view of a Triton kernel came back without metrics (run 15), so the line
of each instruction is taken from the listing's line-info comments and the two are matched by
position; every opcode must agree, or the binaries differ and the script stops. An inlined
helper's instructions count under the helper's line (tl.cumsum's under triton's standard.py).

Why: twice a guessed change to the DMAttn theta kernel cost as much as it saved (NOTES,
fourteenth session); per-line samples say where its time is before the next guess.
"""

from __future__ import annotations

import argparse
import collections
import csv
import linecache
import re
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"


def listing_lines(path: str) -> list[tuple[str, tuple[str, int] | None]]:
    """(opcode, (file, line)) per instruction of an ``nvdisasm -g`` listing, in address order."""
    out, loc = [], None
    with open(path) as fh:
        for text in fh:
            if "//##" in text:
                m = re.search(r'File "([^"]+)", line (\d+)', text)
                loc = (m.group(1), int(m.group(2))) if m else loc
                continue
            m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", text)
            if m:
                out.append((opcode(m.group(1)), loc))
    return out


def opcode(instruction: str) -> str:
    words = instruction.split()
    return words[1] if words[0].startswith("@") else words[0]  # skip a predicate guard


def kernel_rows(path: str, kernel: str) -> list[dict]:
    """The per-instruction rows of ``kernel`` in an ncu source-page CSV (several kernels each
    start with a "Kernel Name" row and a header row)."""
    rows, header, current = [], None, None
    with open(path) as fh:
        for row in csv.reader(fh):
            if row and row[0] == "Kernel Name":
                current, header = row[1], None
            elif row and row[0] == "Address":
                header = row
            elif header and current == kernel and len(row) == len(header):
                rows.append(dict(zip(header, row)))
    return rows


def per_line(listing, rows) -> tuple[collections.Counter, dict, int]:
    if len(listing) != len(rows):
        raise SystemExit(f"{len(listing)} instructions in the listing, {len(rows)} in the report: different binaries")
    samples, reasons = collections.Counter(), collections.defaultdict(collections.Counter)
    for (op, loc), row in zip(listing, rows):
        if op != opcode(row["Source"].strip()):
            raise SystemExit(f"opcode {op} in the listing against {row['Source'].strip()!r}: different binaries")
        samples[loc] += int(row[SAMPLES] or 0)
        for key, value in row.items():
            if key.startswith("stall_") and "Not Issued" not in key:
                reasons[loc][key[len("stall_"):]] += int(value or 0)
    return samples, reasons, sum(samples.values())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sass_csv")
    ap.add_argument("kernel")
    ap.add_argument("listing")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    rows = kernel_rows(args.sass_csv, args.kernel)
    if not rows:
        raise SystemExit(f"{args.kernel}: not in {args.sass_csv}")
    samples, reasons, total = per_line(listing_lines(args.listing), rows)
    print(f"{args.kernel}: {len(rows)} instructions, {total} stall samples")
    for loc, count in samples.most_common(args.top):
        name, line = loc or ("?", 0)
        top = ", ".join(f"{k} {v}" for k, v in reasons[loc].most_common(2))
        print(f"{100 * count / max(total, 1):5.1f}%  {name.split('/')[-1]}:{line}  ({top})")
        print(f"        {linecache.getline(name, line).strip()[:100]}")


if __name__ == "__main__":
    sys.exit(main())
