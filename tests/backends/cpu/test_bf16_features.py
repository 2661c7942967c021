"""The CPU feature probe behind CPU bf16 / fp16 builds (``ember.backends.cpu.features``): which
flags make a precision native, how /proc/cpuinfo is read, and the fake tests use."""
from __future__ import annotations

from ember.backends.cpu import features
from ember.backends.cpu.features import CPUFeatures, cpu_features, set_cpu_features
from ember.plan.config import Precision

SAPPHIRE = "flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16"


def test_native_precisions_follow_the_flags():
    spr = CPUFeatures("Xeon SPR", frozenset(SAPPHIRE.split(":")[1].split()))
    zen3 = CPUFeatures("EPYC 7B13", frozenset({"avx2", "fma"}))
    zen4 = CPUFeatures("EPYC 9B14", frozenset({"avx512f", "avx512_bf16"}))
    gnr = CPUFeatures("Xeon 6 GNR", frozenset({"amx_bf16", "amx_fp16"}))
    assert [c.native(Precision.BF16) for c in (spr, zen3, zen4, gnr)] == [True, False, True, True]
    assert [c.native(Precision.FP16) for c in (spr, zen3, zen4, gnr)] == [False, False, False, True]
    assert spr.native(Precision.FP32) and zen3.native(Precision.INT8)
    assert spr.missing(Precision.BF16) == "amx_bf16 or avx512_bf16" and spr.missing(Precision.FP16) == "amx_fp16"
    assert spr.reported() == ["amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512bw", "avx512f"]


def test_cpuinfo_is_read_from_its_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n{SAPPHIRE}\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    name, flags = features._from_cpuinfo(info)
    assert name == "Intel(R) Xeon(R) Platinum 8480+" and "amx_bf16" in flags and "fpu" in flags
    assert features._from_cpuinfo(tmp_path / "missing") == ("", set())


def test_a_faked_cpu_replaces_the_probe_until_cleared():
    real = cpu_features()
    fake = CPUFeatures("Faked", frozenset())
    set_cpu_features(fake)
    try:
        assert cpu_features() is fake
    finally:
        set_cpu_features(None)
    assert cpu_features() == real and real.name
