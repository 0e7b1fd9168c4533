"""The settings that make ``run.py`` fair, as pure functions: the child processes' environment, the CPU's
identity, and the FLOP count that turns images/s into GFLOP/s.

Environment of every benchmark child (``child_environment``), whatever the framework:

- **Allocator** (``tuned``, the default): ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=
  2147483647``. glibc then serves large blocks from its heap instead of fresh ``mmap`` pages and keeps freed
  memory instead of handing it back, so a step's big temporaries are reused rather than page-faulted in again
  (the run-time equivalent is ``mallopt(M_MMAP_MAX, 0); mallopt(M_TRIM_THRESHOLD, INT_MAX)``). PyTorch's CPU
  tuning guide asks for jemalloc or TCMalloc (``LD_PRELOAD``) for the same reason: they hold freed memory in
  caches. ``default`` removes ``GLIBC_TUNABLES`` and glibc's older ``MALLOC_*_`` variables: glibc as shipped.
- **OpenBLAS unpinned**: ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are dropped, so OpenBLAS picks the
  kernels for the CPU it runs on, as on a user's machine (development machines may pin it to older kernels). Only
  the benchmark's children: tests and CI keep whatever they are given.

FLOPs (``arn_cnn_products``, ``step_flops``): the matrix products of the convolutions and dense layers, counted
as the textbook algorithm does them (a k x k convolution: 2 N Ho Wo k^2 Cin Cout forward; the backward pass
twice that, input and weight gradients), for every framework alike: minarn's Winograd layers do fewer
multiplications and the first layer skips its input gradient, but the figure is work done per image, not
multiplications executed.
"""

from __future__ import annotations

from collections.abc import Mapping

from minarn import allocator as allocator_module

ALLOCATORS = ("tuned", "default")
TUNED_GLIBC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
MALLOC_VARS = ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
               "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
OPENBLAS_PINNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
CPU_FLAGS = ("avx2", "avx512f", "amx")  # "amx": any of amx_tile / amx_bf16 / amx_int8 / ...


def child_environment(base: Mapping[str, str], allocator: str = "tuned") -> tuple[dict[str, str], dict[str, str]]:
    """(environment for a benchmark child, {variable: what was done to it}) from the parent's ``base``.

    ``allocator``: ``"tuned"`` sets ``GLIBC_TUNABLES`` to ``TUNED_GLIBC`` (replacing any malloc variables the
    parent had), ``"default"`` removes them all and sets ``MINARN_MALLOC=default`` (minarn would otherwise tune
    glibc itself at run time, ``minarn.allocator``). OpenBLAS' pinning variables are removed in both cases.
    """
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {allocator!r}")
    env, changes = dict(base), {}
    for var in (*OPENBLAS_PINNING, *MALLOC_VARS):
        if var in env:
            changes[var] = f"dropped (was {env.pop(var)!r})"
    if allocator == "tuned":
        env["GLIBC_TUNABLES"] = TUNED_GLIBC
        changes["GLIBC_TUNABLES"] = f"set to {TUNED_GLIBC!r}" + (
            f", {changes['GLIBC_TUNABLES']}" if "GLIBC_TUNABLES" in changes else "")
    else:
        env[allocator_module.ENV_VAR] = "default"
        changes[allocator_module.ENV_VAR] = "set to 'default' (glibc as shipped in minarn too)"
    return env, changes


def cpu_info(cpuinfo: str) -> dict[str, object]:
    """{"model": model name, "flags": {flag: present}} from the text of ``/proc/cpuinfo`` (first CPU listed)."""
    model, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    present = {f: (any(x.startswith("amx") for x in flags) if f == "amx" else f in flags) for f in CPU_FLAGS}
    return {"model": model, "flags": present}


def conv_flops(batch: int, out_h: int, out_w: int, kernel_h: int, kernel_w: int, c_in: int, c_out: int) -> int:
    """Forward FLOPs of a convolution: one multiply and one add per weight per output pixel,
    2 N Ho Wo kh kw Cin Cout."""
    return 2 * batch * out_h * out_w * kernel_h * kernel_w * c_in * c_out


def dense_flops(batch: int, n_in: int, n_out: int) -> int:
    """Forward FLOPs of a dense layer, 2 N in out."""
    return 2 * batch * n_in * n_out


def arn_cnn_products(model) -> list[tuple[str, int]]:
    """[(layer name, forward FLOPs per image)] for every Conv2D and Dense layer of a minarn ``ARNCNN``, from
    the output shapes of its summary graph (the rows Keras' ``summary()`` would print)."""
    products = []
    for row in model.graph()[1:]:
        layer = model.get_layer(row.name)
        if row.keras_class == "Conv2D":
            _, out_h, out_w, c_out = row.output_shape
            products.append((row.name, conv_flops(1, out_h, out_w, *layer.kernel_size, layer.in_channels, c_out)))
        elif row.keras_class == "Dense":
            products.append((row.name, dense_flops(1, *layer.params["kernel"].shape)))
    return products


def step_flops(forward_per_image: int, batch: int, training: bool) -> int:
    """FLOPs of one call on ``batch`` images: the forward products, plus twice them for a training step's
    backward pass (the gradients of the inputs and of the weights)."""
    return forward_per_image * batch * (3 if training else 1)
