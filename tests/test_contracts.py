"""The contracts the code relies on, checked: the blocks are layers (``Layer`` contract, ``layers`` /
``parameters`` / ``state_dict`` recurse through them, no reach-ins into other layers' private members), every
view of ARN-CNN follows its one list of stages; both kernel backends define exactly ``kernels.KERNELS`` with the
same signatures, a backend that lacks a kernel is refused, and the shared constants (activation kinds,
Winograd's matrices) are defined once; minarn's modules import each other without circles."""

from __future__ import annotations

import ast
import inspect
import itertools
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import minarn
from minarn import kernels
from minarn.gradcheck import check_layer
from minarn.kernels import numpy_ref, winograd
from minarn.layers import (
    ACTIVATIONS,
    AttentionModule,
    Block,
    Conv2D,
    ConvReLUPool,
    Layer,
    MaxPooling2D,
    ResidualBlock,
    conv,
    get_activation,
)
from minarn.model import _KerasNames

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


# -- blocks are layers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> minarn.ARNCNN:
    return minarn.ARNCNN(input_shape=(28, 28, 1), seed=0)


def test_every_stage_is_a_layer_and_layers_recurse_through_the_blocks(model: minarn.ARNCNN) -> None:
    assert all(isinstance(stage, Layer) for stage in [*model.stages, *model.head])
    blocks = [stage for stage in model.stages if isinstance(stage, Block)]
    assert blocks == [model.stem, *model.stem_attention, model.block, *model.mid_attention, *model.deep_attention]
    assert model.block.attention in model.block.sublayers and isinstance(model.block.attention, AttentionModule)
    assert [layer.name for layer in model.layers] == [leaf.name for s in [*model.stages, *model.head]
                                                      for leaf in s.layers]
    assert not any(isinstance(layer, Block) for layer in model.layers)  # only plain layers, blocks walked through
    assert model.block.layers[-6:-4] == model.block.attention.layers[-2:]  # the nested block, in Keras order


def test_block_weights_are_the_live_arrays_the_model_trains_and_saves(model: minarn.ARNCNN) -> None:
    params, state = model.parameters(), model.state_dict()
    for block in (model.block, *model.stem_attention, *model.deep_attention):
        for key, array in block.params.items():
            assert params[key] is array  # the same array, not a copy: an optimizer on block.params trains the model
        for key, array in block.state.items():
            np.testing.assert_array_equal(state[key], array)
        assert block.count_params() == sum(layer.count_params() for layer in block.layers)
    assert set(model.block.state) == {f"batch_normalization{i}/{k}" for i in ("", "_1")
                                      for k in ("moving_mean", "moving_variance")}
    recursed = {key for stage in [*model.stages, *model.head] for key in
                (stage.params if isinstance(stage, Block) else {f"{stage.name}/{k}": 0 for k in stage.params})}
    assert recursed == set(params)


def test_summary_rows_follow_the_layers_and_block_shapes_follow_forward(model: minarn.ARNCNN) -> None:
    for options in (dict(), dict(attention=False), dict(residual=False)):
        m = minarn.ARNCNN(input_shape=(28, 28, 1), seed=0, **options)
        assert [row.name for row in m.graph()] == ["input_1"] + [layer.name for layer in m.layers]
    x = np.random.default_rng(0).random((2, 12, 10, 32), dtype=np.float32)
    for block in (model.stem_attention[0], model.block):
        assert block.compute_output_shape((None, 12, 10, 32)) == (None, *block.forward(x).shape[1:])


@pytest.mark.parametrize("make", [
    lambda: AttentionModule(3, ("conv2d_1", "conv2d_2", "multiply"), (0, 1), np.float64),
    lambda: ResidualBlock(2, 3, _KerasNames(), itertools.count(1).__next__, dtype=np.float64),
    lambda: ResidualBlock(3, 3, _KerasNames(), itertools.count(1).__next__, attention=False, dtype=np.float64),
    lambda: ConvReLUPool(Conv2D(2, 3, 3, padding="same", activation="relu", seed=5, dtype=np.float64),
                         MaxPooling2D(2)),
], ids=["attention", "residual-skip", "residual-identity", "conv-relu-pool"])
def test_blocks_pass_the_layer_gradient_check(make) -> None:
    """``gradcheck.check_layer`` needs only the contract: forward, backward, params and grads with one set of keys."""
    block = make()
    rng = np.random.default_rng(4)
    for key, p in block.params.items():  # biases and BN parameters away from 0 and 1, where bugs hide
        if not key.endswith("kernel"):
            p += rng.uniform(-0.5, 0.5, p.shape)
    with kernels.backend("numpy"):
        errors = check_layer(block, rng.standard_normal((2, 4, 4, block.layers[0].in_channels)), rng)
    assert set(errors) == {"x", *block.params}
    assert max(errors.values()) < 1e-6, errors


def test_a_block_with_two_layers_of_one_name_says_so() -> None:
    block = ResidualBlock(2, 3, name=lambda base: base, seed=itertools.count(1).__next__)  # as lesson 8 builds it
    block.forward(np.zeros((1, 4, 4, 2), np.float32))  # forward and backward do not need the names
    with pytest.raises(ValueError, match="ResidualBlock 'residual_block': two of its layers are called 'conv2d'"):
        _ = block.params


def test_activations_keep_their_state_in_the_cache() -> None:
    """What forward keeps for backward lives in ``_cache``, nowhere else (GELU's Phi(x), Swish's sigmoid)."""
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    for name in ACTIVATIONS:
        layer = get_activation(name)
        layer.forward(x, training=True)
        assert set(vars(layer)) == {"name", "params", "grads", "state", "_cache"}, name


def _reach_ins(path: Path) -> list[str]:
    """``obj._private`` where obj is not ``self``: another object's private member (module-level names such as
    ``np._x`` do not occur in these files)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_layers_and_the_model_use_only_public_members_of_other_layers() -> None:
    files = sorted((PACKAGE / "layers").glob("*.py")) + [PACKAGE / "model.py"]
    assert [hit for path in files for hit in _reach_ins(path)] == []


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


# -- imports: no circles, and no import inside a function that dodges one ----------------------------------
def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _minarn_imports(tree: ast.AST, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules imported at module level, modules imported inside functions) of one parsed module: the minarn
    modules named by ``import minarn.x`` and ``from minarn.x import y`` (``y`` when it is a module itself);
    imports under ``if TYPE_CHECKING:`` are left out (they do not run)."""
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in known else child.module
                           for a in child.names]
            (inner if in_function else top).update(t for t in targets if t in known)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inner


def _import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(p) for p in paths}
    top, inner = {}, {}
    for path in paths:
        name = _module_name(path)
        top[name], inner[name] = _minarn_imports(ast.parse(path.read_text(encoding="utf-8")), known)
    return top, inner


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports in ``graph`` (module -> modules it imports) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the path being walked, 2 done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_the_import_graph_is_read_from_the_sources() -> None:
    top, inner = _import_graph()
    assert {"minarn.run", "minarn.evaluate", "minarn.cli"} <= top["minarn.train"]
    assert "minarn.run" in top["minarn.evaluate"] and "minarn.kernels.numba_jit" in inner["minarn.kernels"]


def test_minarn_has_no_import_circles() -> None:
    top, _ = _import_graph()
    assert _cycle(top) is None


def test_no_import_inside_a_function_dodges_a_circle() -> None:
    """Were every import inside a function (optional packages, figures drawn on demand) moved to the top of its
    module, there would still be no circle: none of them is there to dodge one."""
    top, inner = _import_graph()
    assert _cycle({name: top[name] | inner[name] for name in top}) is None


def test_train_and_evaluate_import_in_either_order() -> None:
    code = "import minarn.{}, minarn.{}; import minarn.run, minarn.cli"
    for first, second in (("evaluate", "train"), ("train", "evaluate")):
        done = subprocess.run([sys.executable, "-c", code.format(first, second)], capture_output=True, text=True,
                              cwd=PACKAGE.parent, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)}, timeout=120)
        assert done.returncode == 0, done.stderr
