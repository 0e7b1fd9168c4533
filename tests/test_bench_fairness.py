"""The pure helpers behind benchmarks/run.py's fair settings (benchmarks/fairness.py): the child environment,
the CPU flags, the FLOP count. No timing is measured or asserted here."""

import pytest

from benchmarks import fairness
from minarn.model import ARNCNN

PARENT = {"PATH": "/usr/bin", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576",
          "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "2"}


def test_tuned_environment_unpins_openblas_and_sets_glibc_tunables():
    env, changes = fairness.child_environment(PARENT, "tuned")
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    assert "MALLOC_TRIM_THRESHOLD_" not in env  # replaced by the tunables, not mixed with them
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
    assert env["PATH"] == "/usr/bin" and env["OMP_NUM_THREADS"] == "2"  # everything else is passed on
    assert "'Haswell'" in changes["OPENBLAS_CORETYPE"] and set(changes) == {
        "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"}
    assert PARENT["OPENBLAS_CORETYPE"] == "Haswell"  # the parent's (and so the tests') environment is untouched


def test_default_environment_is_glibc_as_shipped_and_still_unpinned():
    env, changes = fairness.child_environment({**PARENT, "GLIBC_TUNABLES": "glibc.malloc.check=3"}, "default")
    assert not any(v in env for v in (*fairness.MALLOC_VARS, *fairness.OPENBLAS_PINNING))
    assert changes["GLIBC_TUNABLES"] == "dropped (was 'glibc.malloc.check=3')"
    env, changes = fairness.child_environment({"PATH": "/bin"}, "default")
    assert env == {"PATH": "/bin", "MINARN_MALLOC": "default"}  # minarn must not tune glibc at run time either
    assert list(changes) == ["MINARN_MALLOC"]


def test_unknown_allocator_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="tuned, default.*'jemalloc'"):
        fairness.child_environment(PARENT, "jemalloc")


def test_cpu_info_reads_the_model_and_the_vector_flags():
    text = ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n\n"
            "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert fairness.cpu_info(text) == {"model": "AMD EPYC 9R14",
                                       "flags": {"avx2": True, "avx512f": True, "amx": False}}
    amx = fairness.cpu_info("model name : Xeon\nflags : avx2 amx_bf16 amx_tile\n")
    assert amx["flags"] == {"avx2": True, "avx512f": False, "amx": True}
    assert fairness.cpu_info("") == {"model": "unknown CPU", "flags": dict.fromkeys(fairness.CPU_FLAGS, False)}


def test_flop_count_of_the_first_convolution_by_hand():
    # conv2d: 3x3 kernel, 1 -> 32 channels, 64x64 input without padding -> 62x62 outputs; each output pixel of
    # each filter takes 9 multiplies and 9 adds: 62 * 62 * 32 * 9 * 2 = 2,214,144 FLOPs per image.
    assert fairness.conv_flops(1, 62, 62, 3, 3, 1, 32) == 62 * 62 * 32 * 9 * 2 == 2_214_144
    assert fairness.conv_flops(40, 62, 62, 3, 3, 1, 32) == 40 * 2_214_144
    assert fairness.dense_flops(40, 3125, 256) == 2 * 40 * 3125 * 256


def test_arn_cnn_products_cover_every_convolution_and_dense_layer():
    products = dict(fairness.arn_cnn_products(ARNCNN(seed=0)))
    assert len(products) == 23 + 2  # conv2d .. conv2d_22, dense, dense_1
    assert products["conv2d"] == 2_214_144
    assert products["conv2d_1"] == 2 * 31 * 31 * 32 * 32  # a 1x1 attention convolution at 31x31x32
    assert products["dense"] == 2 * 3125 * 256 and products["dense_1"] == 2 * 256 * 6
    forward = sum(products.values())
    assert fairness.step_flops(forward, 40, training=True) == 3 * 40 * forward
    assert fairness.step_flops(forward, 256, training=False) == 256 * forward
    assert 25e9 < fairness.step_flops(forward, 40, training=True) < 27e9  # the ~26 GFLOP step of issue 20
