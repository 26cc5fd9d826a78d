"""benchmarks/ncu_source_lines.py: Nsight Compute's per-instruction stall samples summed per
source line, on a hand-written report and listing (the shapes of ncu 2025.3's CSV export and of
nvdisasm -g's line comments)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import ncu_source_lines  # noqa: E402

HEADER = '"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_long_sb","stall_wait"'
CSV = "\n".join([
    '"Kernel Name","other_kernel",', HEADER, '"0x10","      NOP","99","1","99","0"',
    '"Kernel Name","k",', HEADER,
    '"0x00","      LDG.E R2, desc[UR4][R2.64]","1","8","0","1"',
    '"0x10","      FADD R3, R2, R2","6","8","5","1"',
    '"0x20","      @!P0  BRA 0x40","3","8","0","3"',
    '"0x30","      FMUL R3, R3, R3","2","8","0","2"',
])
LISTING = """\t//## File "/src/a.py", line 10
        /*0000*/                   LDG.E R2, desc[UR4][R2.64] ;
\t//## File "/src/a.py", line 12
        /*0010*/                   FADD R3, R2, R2 ;
        /*0020*/              @!P0 BRA 0x40 ;
\t//## File "/src/a.py", line 10
        /*0030*/                   FMUL R3, R3, R3 ;
"""


def write(tmp_path, csv_text, listing):
    (tmp_path / "r.csv").write_text(csv_text)
    (tmp_path / "k.sass").write_text(listing)
    return str(tmp_path / "r.csv"), str(tmp_path / "k.sass")


def test_samples_are_summed_per_line_of_the_kernel_asked_for(tmp_path):
    csv_path, sass = write(tmp_path, CSV, LISTING)
    rows = ncu_source_lines.kernel_rows(csv_path, "k")
    samples, reasons, total = ncu_source_lines.per_line(ncu_source_lines.listing_lines(sass), rows)
    assert total == 12  # other_kernel's 99 samples are not counted
    assert samples[("/src/a.py", 12)] == 9 and samples[("/src/a.py", 10)] == 3
    assert reasons[("/src/a.py", 12)] == {"long_sb": 5, "wait": 4}


def test_a_listing_of_another_binary_is_refused(tmp_path):
    csv_path, sass = write(tmp_path, CSV, LISTING.replace("FMUL", "FFMA"))
    with pytest.raises(SystemExit, match="different binaries"):
        ncu_source_lines.main([csv_path, "k", sass])
    csv_path, sass = write(tmp_path, CSV, LISTING.split("\t//## File \"/src/a.py\", line 10\n        /*0030*/")[0])
    with pytest.raises(SystemExit, match="3 instructions in the listing, 4 in the report"):
        ncu_source_lines.main([csv_path, "k", sass])
