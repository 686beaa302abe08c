"""The machine line of the benchmarks' headers (bench/machine.py), from fake /proc/cpuinfo."""

from __future__ import annotations

from normserve.bench.machine import describe, read_cpuinfo

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 \
avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
"""
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm sve bf16 i8mm\nCPU part\t: 0xd40\n"


def test_x86_model_and_extensions(tmp_path):
    (tmp_path / "cpuinfo").write_text(XEON)
    model, flags = read_cpuinfo(tmp_path / "cpuinfo")
    assert model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert {"avx512f", "amx_tile", "fpu"} <= flags
    line = describe(tmp_path / "cpuinfo")
    assert line.startswith(model + ", ")
    assert line.endswith("vector: avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 "
                         "avx512_fp16 amx_tile amx_bf16 amx_int8")


def test_arm_and_unreadable(tmp_path):
    (tmp_path / "cpuinfo").write_text(GRAVITON)
    assert describe(tmp_path / "cpuinfo").endswith("vector: asimd sve bf16 i8mm")
    assert read_cpuinfo(tmp_path / "missing") == ("", set())
    assert "vector: none named" in describe(tmp_path / "missing")
