"""ONNX export checked by ONNX Runtime: every configuration, random and trained weights, on real sample images.

ONNX Runtime is an implementation of its own (its own convolution, batch norm, GELU via Erf), so agreeing with
minarn's ``predict`` within 1e-5 on real images checks the export's layouts (kernel transposes, pads, the
channels-last flatten) and minarn's inference path at once.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import subprocess
import sys
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import minarn
from minarn import ARNCNN, export, interop, kernels, load_model, onnx_export, onnx_model, predict
from minarn.bn_statistics import recompute_batchnorm_statistics
from minarn.data import MEDNIST_CLASSES, sample_path
from minarn.model import DENSE_ACTIVATIONS
from minarn.predict import load_image

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "results" / "default-seed123"
TOLERANCE = 1e-5  # largest allowed difference in probability between ONNX Runtime and minarn


def sample_files(per_class: int) -> list[Path]:
    """The first ``per_class`` shipped sample images of each class (sorted), labels in MEDNIST_CLASSES order."""
    return [f for c in MEDNIST_CLASSES for f in sorted((sample_path() / c).iterdir())[:per_class]]


def sample_images(per_class: int, size: int = 64) -> np.ndarray:
    """Real images as predict sees them: (6 * per_class, size, size, 1) uint8."""
    return np.stack([load_image(f, size) for f in sample_files(per_class)])


def perturbed(model: ARNCNN, images: np.ndarray, seed: int = 0) -> ARNCNN:
    """Random weights with biases and BN scales/offsets away from their defaults (0 or 1), and BN moving
    statistics those of ``images`` (variances down to 1e-4, where epsilon matters): a missing bias, a wrong
    epsilon or a batch norm left out changes the output."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for key, value in layer.params.items():
            if key != "kernel":
                value += rng.uniform(0.1, 0.3, value.shape).astype(value.dtype)
    recompute_batchnorm_statistics(model, images)
    return model


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """ONNX Runtime alone (not minarn's wrapper): float32 (N, H, W, C) in [0, 1] -> probabilities."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": images.astype(np.float32) / np.float32(255)})[0]


def assert_same_as_minarn(model: ARNCNN, images: np.ndarray, tmp_path: Path) -> onnx.ModelProto:
    path = interop.to_onnx(model, tmp_path / "model.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    ours = model.predict(images)
    theirs = onnx_probabilities(path, images)
    assert theirs.shape == ours.shape == (len(images), model.num_classes)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=TOLERANCE)
    proto = onnx.load(str(path))
    assert_same_inside(model, onnx.load(str(path)), images)
    return proto


def assert_same_inside(model: ARNCNN, proto: onnx.ModelProto, images: np.ndarray) -> None:
    """The feature map of conv2d_22 (Grad-CAM's layer) and the logits, read from the graph as extra outputs: a
    difference the softmax would squeeze below 1e-5 still shows here."""
    features, logits = f"{model.conv_out.name}/relu", f"{model.classifier.name}/linear"
    for name in (features, logits):
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) / np.float32(255)
    got_features, got_logits = session.run([features, logits], {"image": x})
    ours_features = model.features(x)
    np.testing.assert_allclose(got_features.transpose(0, 2, 3, 1), ours_features, rtol=1e-4,
                               atol=1e-5 * np.abs(ours_features).max())
    ours_logits = model.logits(x)
    np.testing.assert_allclose(got_logits, ours_logits, rtol=1e-4, atol=1e-5 * np.abs(ours_logits).max())


def node_names(proto: onnx.ModelProto, op: str) -> list[str]:
    return [n.name for n in proto.graph.node if n.op_type == op]


# -- every configuration, random weights ------------------------------------------------------------------
@pytest.mark.parametrize("attention,residual", [(True, True), (False, True), (True, False), (False, False)])
def test_architectures_match_minarn_on_sample_images(attention: bool, residual: bool, tmp_path: Path) -> None:
    images = sample_images(4)
    model = perturbed(ARNCNN(attention=attention, residual=residual, seed=3), images)
    proto = assert_same_as_minarn(model, images, tmp_path)
    convs = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert node_names(proto, "Conv") == convs  # one Conv per minarn convolution, in Keras' order, named alike
    assert len([n for n in node_names(proto, "Mul") if n.startswith("multiply")]) == 8 * attention
    assert node_names(proto, "Add") == (["add"] if residual else []) + ["dense/gelu/one_plus"]
    assert node_names(proto, "BatchNormalization") == ["batch_normalization", "batch_normalization_1"]
    assert not node_names(proto, "Dropout")


@pytest.mark.parametrize("activation", [a for a in DENSE_ACTIVATIONS if a != "gelu"])
def test_dense_activations_match_minarn(activation: str, tmp_path: Path) -> None:
    images = sample_images(3, size=32)
    model = perturbed(ARNCNN(input_shape=(32, 32, 1), dense_activation=activation, seed=5), images, seed=1)
    model.dense.params["bias"] -= 0.5  # pre-activations on both sides of 0, where the activations differ
    assert_same_as_minarn(model, images, tmp_path)


def test_other_image_size_and_channels(tmp_path: Path) -> None:
    """A non-square RGB model: the three channels are three different real images, so a channel mix-up shows."""
    from PIL import Image

    H, W = 40, 48
    files = sample_files(6)
    gray = [np.asarray(Image.open(f).convert("L").resize((W, H), Image.NEAREST)) for f in files]
    images = np.stack([np.stack([gray[i], gray[(i + 7) % len(gray)], gray[(i + 13) % len(gray)]], axis=-1)
                       for i in range(len(gray))])
    model = perturbed(ARNCNN(num_classes=4, input_shape=(H, W, 3), seed=11), images, seed=2)
    proto = assert_same_as_minarn(model, images, tmp_path)
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", H, W, 3]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["input_shape"]) == [H, W, 3] and "RGB" in meta["preprocessing"]
    assert json.loads(meta["class_names"]) == ["class 0", "class 1", "class 2", "class 3"]


def test_float64_model_exports_in_float32(tmp_path: Path) -> None:
    images = sample_images(2, size=28)
    with kernels.backend("numpy"):  # float64 kernels would be compiled for this test alone
        model = perturbed(ARNCNN(input_shape=(28, 28, 1), dtype=np.float64, seed=4), images)
        proto = assert_same_as_minarn(model, images, tmp_path)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT}


# -- the file itself ----------------------------------------------------------------------------------------
def test_ir_version_and_opset_are_set_explicitly(tmp_path: Path) -> None:
    proto = onnx_export.build_onnx(ARNCNN(input_shape=(28, 28, 1), seed=0))
    assert proto.ir_version == onnx_export.IR_VERSION == 8  # not what this onnx writes by default
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", onnx_export.OPSET)] and onnx_export.OPSET == 17
    assert proto.producer_name == "minarn" and proto.producer_version == minarn.__version__
    onnx.checker.check_model(proto, full_check=True)


def test_metadata_names_the_classes_input_and_provenance(tmp_path: Path) -> None:
    model = perturbed(ARNCNN(input_shape=(28, 28, 1), seed=0), sample_images(1, size=28))
    saved = model.save(tmp_path / "model.npz")
    (tmp_path / "config.json").write_text(json.dumps({
        "options": {"data": "/somewhere/private/MedNIST.tar.gz", "seed": 9}, "data_identity": "abc123",
        "class_names": list("ABCDEF"), "test": {"accuracy": 0.5, "best_epoch": 3, "unlisted": 1}}))
    assert export.main([str(saved), str(tmp_path / "m.onnx")], stdout=io.StringIO()) == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == list("ABCDEF")  # from config.json, as predict takes them
    assert json.loads(meta["input_shape"]) == [28, 28, 1]
    assert "grayscale" in meta["preprocessing"] and "255" in meta["preprocessing"] and "28x28" in meta["preprocessing"]
    assert meta["source"] == "model.npz" and meta["source_sha256"] == sha256(saved.read_bytes()).hexdigest()
    run = json.loads(meta["training_run"])
    assert run["data_identity"] == "abc123" and run["options"] == {"data": "MedNIST.tar.gz", "seed": 9}
    assert run["test"] == {"accuracy": 0.5, "best_epoch": 3}
    assert json.loads(meta["minarn_config"])["input_shape"] == [28, 28, 1]
    assert meta["minarn_version"] == minarn.__version__


# -- the published, trained model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def published() -> tuple[ARNCNN, np.ndarray, np.ndarray]:
    """The published model, the 600 shipped sample images, and minarn's probabilities for them."""
    model = load_model(PUBLISHED / "model.npz")
    images = sample_images(100)
    return model, images, model.predict(images)


def test_trained_model_matches_minarn_on_all_sample_images(published, tmp_path: Path) -> None:
    _, images, ours = published
    status, _, err = _export([str(PUBLISHED / "model.npz"), str(tmp_path / "m.onnx")])
    assert status == 0, err
    theirs = onnx_probabilities(tmp_path / "m.onnx", images)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=TOLERANCE)
    labels = np.repeat(np.arange(6), 100)
    assert (theirs.argmax(axis=1) == labels).all()  # 600 of 600, as results/MODEL_CARD.md says for minarn


def test_published_onnx_file_is_the_export_of_the_published_weights(published, tmp_path: Path) -> None:
    """results/default-seed123/model.onnx: same graph and metadata as exporting model.npz now, same answers."""
    model, images, ours = published
    path = PUBLISHED / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    file = onnx.load(str(path))
    meta = {p.key: p.value for p in file.metadata_props}
    assert meta["source_sha256"] == sha256((PUBLISHED / "model.npz").read_bytes()).hexdigest(), (
        "model.onnx was exported from other weights: python -m minarn.export results/default-seed123/model.npz "
        "results/default-seed123/model.onnx")
    assert json.loads(meta["class_names"]) == json.loads((PUBLISHED / "config.json").read_text())["class_names"]
    fresh = onnx_export.build_onnx(model, predict.class_names_for(model, PUBLISHED / "model.npz"),
                                   onnx_export.file_provenance(PUBLISHED / "model.npz"))
    assert file.graph == fresh.graph and file.metadata_props == fresh.metadata_props, (
        "model.onnx is not what the exporter writes now; re-export it (command above)")
    np.testing.assert_allclose(onnx_probabilities(path, images), ours, rtol=0, atol=TOLERANCE)
    assert path.stat().st_size < 8_000_000


def test_export_command_writes_the_published_file(tmp_path: Path) -> None:
    """The command of the issue, as a user runs it."""
    out = tmp_path / "m.onnx"
    done = subprocess.run([sys.executable, "-m", "minarn.export", str(PUBLISHED / "model.npz"), str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out} (6.5 MB): input 'image' float32 (N, 64, 64, 1)")
    assert onnx.load(str(out)).graph == onnx.load(str(PUBLISHED / "model.onnx")).graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left beside it


def test_verify_compares_onnx_runtime_with_minarn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = perturbed(ARNCNN(input_shape=(28, 28, 1), seed=6), sample_images(1, size=28)).save(tmp_path / "s.npz")
    status, out, err = _export([str(saved), str(tmp_path / "s.onnx"), "--verify"])
    assert status == 0, err
    assert re.search(r"ONNX Runtime and minarn agree on 120 sample images: largest difference in probability "
                     r"\S+ \(allowed 1e-05\)", out), out
    monkeypatch.setattr(export, "VERIFY_TOLERANCE", -1.0)  # no difference is small enough: the failure path
    status, out, err = _export([str(saved), str(tmp_path / "s.onnx"), "--verify"])
    assert status == 1 and "DISAGREE on 120 sample images" in err
    monkeypatch.setattr(export, "VERIFY_TOLERANCE", 1e-5)
    rgb = ARNCNN(input_shape=(28, 28, 3), seed=0).save(tmp_path / "rgb.npz")  # a --channels 3 model
    status, out, err = _export([str(rgb), str(tmp_path / "rgb.onnx"), "--verify"])
    assert status == 0 and "agree on 120 sample images" in out, err


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- errors ---------------------------------------------------------------------------------------------
def _export(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return export.main(argv, stdout=out, stderr=err), out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case,message", [
    ("foreign-npz", "holds no minarn model configuration"),
    ("not-npz", "cannot read"),
    ("missing", "no such file"),
    ("onnx-as-model", "is an ONNX file already"),
    ("bad-suffix", "must name a .onnx file"),
    ("no-folder", "does not exist"),
])
def test_export_errors_are_one_line_and_write_nothing(case: str, message: str, tmp_path: Path) -> None:
    foreign = tmp_path / "weights.npz"
    np.savez(foreign, kernel=np.zeros((3, 3)))  # an .npz that is not a minarn model
    text = tmp_path / "model.npz"
    text.write_text("not a zip file")
    model = ARNCNN(input_shape=(28, 28, 1), seed=0).save(tmp_path / "good.npz")
    before = sorted(tmp_path.iterdir())
    argv = {
        "foreign-npz": [str(foreign), str(tmp_path / "out.onnx")],
        "not-npz": [str(text), str(tmp_path / "out.onnx")],
        "missing": [str(tmp_path / "nope.npz"), str(tmp_path / "out.onnx")],
        "onnx-as-model": [str(foreign.with_suffix(".onnx")), str(tmp_path / "out.onnx")],
        "bad-suffix": [str(model), str(tmp_path / "out.npz")],
        "no-folder": [str(model), str(tmp_path / "no" / "out.onnx")],
    }[case]
    if case == "onnx-as-model":
        Path(argv[0]).write_bytes(b"x")
        before = sorted(tmp_path.iterdir())
    status, out, err = _export(argv)
    assert status == 2 and out == ""
    assert err.startswith("python -m minarn.export: error:") and err.count("\n") == 1 and message in err, err
    assert sorted(tmp_path.iterdir()) == before


def test_to_onnx_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="expected a minarn ARNCNN"):
        interop.to_onnx(object(), tmp_path / "m.onnx")  # type: ignore[arg-type]
    model = ARNCNN(input_shape=(28, 28, 1), seed=0)
    with pytest.raises(ValueError, match="6 classes, got 2 class names"):
        interop.to_onnx(model, tmp_path / "m.onnx", class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names are set by minarn"):
        interop.to_onnx(model, tmp_path / "m.onnx", provenance={"class_names": "x"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interop.to_onnx(model, tmp_path / "no" / "m.onnx")
    model.get_layer("conv2d_3").params["bias"][0] = np.nan
    with pytest.raises(ValueError, match="conv2d_3/bias holds NaN"):
        interop.to_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_importing_minarn_interop_and_predict_does_not_import_onnx() -> None:
    """onnx takes over a second to import: only the export itself loads it."""
    code = ("import sys, minarn, minarn.interop, minarn.predict; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'onnx'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=False)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_missing_onnx_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    monkeypatch.delitem(sys.modules, "minarn.onnx_export")
    monkeypatch.delattr(minarn, "onnx_export")
    with pytest.raises(ImportError, match=re.escape("pip install 'minarn[onnx]'")):
        importlib.import_module("minarn.onnx_export")
    with pytest.raises(ImportError, match=re.escape("pip install 'minarn[onnx]'")):
        interop.to_onnx(ARNCNN(input_shape=(28, 28, 1), seed=0), tmp_path / "m.onnx")
    monkeypatch.setattr(export, "onnx_export", None)
    monkeypatch.setattr(export, "_MISSING_ONNX", "minarn's ONNX export needs the onnx package; install it with: "
                        "pip install 'minarn[onnx]'", raising=False)
    status, _, err = _export([str(PUBLISHED / "model.npz"), str(tmp_path / "m.onnx")])
    assert status == 2 and "pip install 'minarn[onnx]'" in err and list(tmp_path.iterdir()) == []


# -- python -m minarn.predict on an .onnx file ----------------------------------------------------------------
def _predict(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return predict.main(argv, stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_predict_takes_an_onnx_file_and_prints_what_the_npz_gives() -> None:
    files = [str(f) for f in sample_files(2)]
    status, from_onnx, err = _predict([str(PUBLISHED / "model.onnx"), *files, "--probabilities"])
    assert status == 0, err
    status, from_npz, _ = _predict([str(PUBLISHED / "model.npz"), *files, "--probabilities"])
    assert status == 0 and from_onnx == from_npz and from_onnx.count("\n") == len(files) + 1


def test_predict_refuses_foreign_or_broken_onnx_and_gradcam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = onnx.helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])])
    foreign = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, producer_name="someone-else", ir_version=8,
                                opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    broken = tmp_path / "broken.onnx"
    broken.write_text("not protobuf")
    image = str(sample_files(1)[0])
    for argv, message in (([str(foreign), image], ("not an ONNX model exported by minarn (its producer is "
                                                    "'someone-else')")),
                          ([str(broken), image], "not an ONNX model ONNX Runtime can load"),
                          ([str(PUBLISHED / "model.onnx"), image, "--gradcam", str(tmp_path / "c.png")],
                           "--gradcam needs a model.npz")):
        status, out, err = _predict(argv)
        assert status == 2 and out == "" and message in err and err.count("\n") == 1, err
    monkeypatch.setattr(onnx_model, "onnxruntime", None)
    status, _, err = _predict([str(PUBLISHED / "model.onnx"), image])
    assert status == 2 and "pip install onnxruntime" in err


def test_onnx_model_checks_the_input_shape() -> None:
    model = onnx_model.load_onnx_model(PUBLISHED / "model.onnx")
    assert model.class_names == list(MEDNIST_CLASSES) and model.input_shape == (64, 64, 1)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 64, 64, 1\), got \(2, 32, 32, 1\)"):
        model.predict(np.zeros((2, 32, 32, 1), np.float32))


# -- the README's example ---------------------------------------------------------------------------------
@pytest.mark.parametrize("document", ["README.md", "results/MODEL_CARD.md"])
def test_documented_onnx_example_runs(document: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / document).read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "onnxruntime" in b)
    assert "import minarn" not in code  # the deployment side needs ONNX Runtime, Pillow and NumPy only
    code = code.replace('"scan.png"', '"minarn/sample/MedNIST/Hand/000083.jpeg"')  # the card's stand-in name
    monkeypatch.chdir(ROOT)
    shown: list = []
    namespace: dict = {"print": lambda *a, **k: shown.append(a)}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["probs"].shape == (1, 6)
    assert shown[0][0] == "Hand" and shown[0][1] > 0.9
