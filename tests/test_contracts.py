"""The contracts the code relies on, checked: both kernel backends define exactly ``kernels.KERNELS`` with the same
signatures, a backend that lacks a kernel is refused, and the shared constants (activation kinds, Winograd's
matrices) are defined once."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from minarn import kernels
from minarn.kernels import numpy_ref, winograd
from minarn.layers import conv

PACKAGE = Path(kernels.__file__).resolve().parents[1]  # .../minarn


def _backends() -> list[ModuleType]:
    modules = [numpy_ref]
    if kernels.numba_available():
        from minarn.kernels import numba_jit

        modules.append(numba_jit)
    return modules


def _public_functions(module: ModuleType) -> dict[str, inspect.Signature]:
    """The functions ``module`` itself defines whose names do not start with ``_``, with their signatures."""
    return {name: inspect.signature(f) for name, f in inspect.getmembers(module, inspect.isfunction)
            if f.__module__ == module.__name__ and not name.startswith("_")}


def _parameters(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    """(name, kind, default) of every parameter: what a caller depends on (annotations left out)."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


# -- the kernel interface --------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", _backends(), ids=lambda m: m.NAME)
def test_every_backend_defines_exactly_the_listed_kernels(module: ModuleType) -> None:
    assert sorted(_public_functions(module)) == sorted(kernels.KERNELS)
    assert isinstance(module.WINOGRAD, bool) and module.NAME in kernels.BACKENDS


@pytest.mark.skipif(not kernels.numba_available(), reason="numba is not installed")
def test_numba_kernels_take_the_same_parameters_as_the_reference() -> None:
    from minarn.kernels import numba_jit

    reference, twin = _public_functions(numpy_ref), _public_functions(numba_jit)
    differ = {name: (_parameters(reference[name]), _parameters(twin[name]))
              for name in kernels.KERNELS if _parameters(reference[name]) != _parameters(twin[name])}
    assert not differ


def test_a_backend_missing_a_kernel_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(numpy_ref, "batchnorm_backward")
    with pytest.raises(ImportError, match="numpy_ref lacks the kernels batchnorm_backward"):
        kernels.use_backend("numpy")


# -- constants defined once ------------------------------------------------------------------------------------
def _module_level_assignments(name: str) -> list[str]:
    """The files of minarn/ that assign ``name`` at module level (``NAME = ...`` or ``NAME: type = ...``)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            names += [e.id for t in targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)]
            if name in names:
                found.append(str(path.relative_to(PACKAGE)))
    return found


@pytest.mark.parametrize("name, home", [("ACTIVATION_KINDS", "kernels/numpy_ref.py"), ("B_T", "kernels/winograd.py"),
                                        ("G", "kernels/winograd.py"), ("A_T", "kernels/winograd.py"),
                                        ("KERNELS", "kernels/__init__.py")])
def test_shared_constants_are_defined_once(name: str, home: str) -> None:
    assert _module_level_assignments(name) == [home]


def test_the_backends_and_conv2d_share_the_activation_kinds() -> None:
    for module in _backends():
        assert module.ACTIVATION_KINDS is numpy_ref.ACTIVATION_KINDS
    assert set(conv._FUSABLE.values()) == set(numpy_ref.ACTIVATION_KINDS)


def test_reference_tile_transforms_use_the_winograd_matrices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's input transform follows ``winograd.B_T`` (a changed matrix changes its result)."""
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 1))
    before = numpy_ref.winograd_input(x, 0, 0, 1, 1)
    monkeypatch.setattr(numpy_ref, "B_T", 2 * winograd.B_T)
    np.testing.assert_allclose(numpy_ref.winograd_input(x, 0, 0, 1, 1), 4 * before)
