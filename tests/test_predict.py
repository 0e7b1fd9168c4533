"""python -m minarn.predict, in-process on a tiny trained run: any image size/mode, bad files, --gradcam."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_fixture import assert_png, tiny_run  # noqa: F401 - tiny_run is a fixture

from minarn.data import sample_path, scale_images
from minarn.model import load_model
from minarn.predict import load_image, main


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def jpegs() -> list[Path]:
    return [min((sample_path() / c).iterdir()) for c in ("CXR", "Hand", "HeadCT")]


def test_predicts_class_and_probability(tiny_run: Path, jpegs: list[Path]) -> None:  # noqa: F811
    status, out, err = _run([str(tiny_run / "model.npz"), *map(str, jpegs)])
    assert status == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [line[0] for line in lines] == list(map(str, jpegs))
    model = load_model(tiny_run / "model.npz")
    x = np.stack([np.asarray(Image.open(p).convert("L"))[..., None] for p in jpegs])
    probs = model.predict(scale_images(x))
    names = json.loads((tiny_run / "config.json").read_text())["class_names"]
    for (_, name, p), row in zip(lines, probs):
        assert name == names[int(row.argmax())]
        assert float(p) == pytest.approx(float(row.max()), abs=6e-5)


def test_run_folder_as_model(tiny_run: Path, jpegs: list[Path]) -> None:  # noqa: F811
    status, out, _ = _run([str(tiny_run), str(jpegs[0])])
    assert status == 0 and out.count("\n") == 1


@pytest.mark.parametrize("mode,size,fmt", [("RGB", (100, 80), "PNG"), ("RGBA", (64, 64), "PNG"),
                                            ("P", (33, 47), "GIF"), ("I;16", (128, 128), "TIFF"),
                                            ("1", (64, 64), "BMP"), ("L", (512, 300), "JPEG")])
def test_any_size_and_mode_converted_as_in_training(mode: str, size: tuple[int, int], fmt: str,
                                                    tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 300, size[::-1]).astype(np.uint16))
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, format=fmt)
    x = load_image(path)
    assert x.shape == (64, 64, 1) and x.dtype == np.uint8
    with Image.open(path) as again:  # the training conversion: 'L', then nearest resize if the size differs
        if mode == "I;16":  # 16-bit: scaled from the image's smallest to its largest value onto 0..255
            a = np.asarray(again, dtype=np.float64)
            gray = Image.fromarray(np.round((a - a.min()) * 255 / (a.max() - a.min())).astype(np.uint8))
        else:
            gray = again.convert("L")
        expected = np.asarray(gray if gray.size == (64, 64) else gray.resize((64, 64), Image.NEAREST))
    np.testing.assert_array_equal(x[..., 0], expected)


def test_bad_files_reported_others_predicted(tiny_run: Path, jpegs: list[Path], tmp_path: Path) -> None:  # noqa: F811
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    fake = tmp_path / "broken.jpeg"
    fake.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    missing = tmp_path / "missing.png"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    status, out, err = _run([str(tiny_run / "model.npz"), str(jpegs[0]), str(text), str(fake), str(missing),
                             str(empty), str(jpegs[1])])
    assert status == 1
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(jpegs[0]), str(jpegs[1])]
    assert "Traceback" not in err
    err_lines = err.splitlines()
    assert len(err_lines) == 4
    assert "notes.txt: not an image (Pillow does not recognise" in err_lines[0]
    assert "broken.jpeg: not an image Pillow can decode" in err_lines[1]
    assert "missing.png: no such file" in err_lines[2] and f"{empty}: a folder without image files" in err_lines[3]


@pytest.mark.parametrize("case", ["no-model", "not-npz", "truncated-npz", "no-images", "bad-gradcam-suffix",
                                  "bad-gradcam-dir"])
def test_usage_errors_exit_2_with_one_line(case: str, tiny_run: Path, jpegs: list[Path], tmp_path: Path) -> None:  # noqa: F811
    model = str(tiny_run / "model.npz")
    truncated = tmp_path / "truncated.npz"
    data = (tiny_run / "model.npz").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    argv = {
        "truncated-npz": [str(truncated), str(jpegs[0])],
        "no-model": [str(tmp_path / "nope.npz"), str(jpegs[0])],
        "not-npz": [str(jpegs[0]), str(jpegs[0])],
        "no-images": [model],
        "bad-gradcam-suffix": [model, str(jpegs[0]), "--gradcam", str(tmp_path / "cam.jpg")],
        "bad-gradcam-dir": [model, str(jpegs[0]), "--gradcam", str(tmp_path / "no" / "cam.png")],
    }[case]
    status, out, err = _run(argv)
    assert status == 2 and out == ""
    assert err.startswith("python -m minarn.predict: error:") and err.count("\n") == 1, err


def test_gradcam_overlay_written(tiny_run: Path, jpegs: list[Path], tmp_path: Path) -> None:  # noqa: F811
    target = tmp_path / "cam.png"
    status, out, err = _run([str(tiny_run / "model.npz"), *map(str, jpegs[:2]), "--gradcam", str(target)])
    assert status == 0, err
    assert out.count("\n") == 2 and str(target) in err
    assert_png(target, min_size=(250, 250))


def test_folder_stands_for_the_images_below_it(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    scans = tmp_path / "scans"
    for sub, cls in (("b", "Hand"), ("a/deeper", "CXR")):
        (scans / sub).mkdir(parents=True)
        for f in sorted((sample_path() / cls).iterdir())[:2]:
            (scans / sub / f.name.replace(".jpeg", ".JPEG")).write_bytes(f.read_bytes())  # suffix case ignored
    (scans / "b" / "notes.txt").write_text("skipped: not an image extension")
    status, out, err = _run([str(tiny_run), str(scans)])
    assert status == 0, err
    listed = [line.split("\t")[0] for line in out.splitlines()]
    expected = sorted(str(f) for f in scans.rglob("*.JPEG"))
    assert listed == expected and len(listed) == 4


def test_probabilities_give_every_class_under_a_header(tiny_run: Path, jpegs: list[Path]) -> None:  # noqa: F811
    status, out, err = _run([str(tiny_run), *map(str, jpegs), "--probabilities"])
    assert status == 0, err
    header, *rows = [line.split("\t") for line in out.splitlines()]
    names = json.loads((tiny_run / "config.json").read_text())["class_names"]
    assert header == ["image", "class", "probability", *names] and len(rows) == len(jpegs)
    probs = load_model(tiny_run / "model.npz").predict(scale_images(np.stack([load_image(p) for p in jpegs])))
    for row, expected in zip(rows, probs):
        values = np.array(row[3:], dtype=float)
        np.testing.assert_allclose(values, expected, atol=6e-5)
        assert row[1] == names[int(values.argmax())] and float(row[2]) == values.max()


def test_images_go_through_in_chunks_in_the_order_given(tiny_run: Path, jpegs: list[Path], tmp_path: Path,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import minarn.predict

    whole = _run([str(tiny_run), *map(str, jpegs), str(jpegs[0])])
    monkeypatch.setattr(minarn.predict, "CHUNK", 2)
    monkeypatch.setattr(minarn.predict, "MAX_GRADCAM", 3)
    calls = []
    real = minarn.predict.predict_files
    monkeypatch.setattr(minarn.predict, "predict_files", lambda m, paths: calls.append(len(paths)) or real(m, paths))
    missing = str(tmp_path / "missing.png")
    status, out, err = _run([str(tiny_run), str(jpegs[0]), missing, *map(str, jpegs[1:]), str(jpegs[0]),
                             "--gradcam", str(tmp_path / "cam.png")])
    assert calls == [2, 2, 1] and status == 1
    assert out == whole[1]  # the same lines, in the order given, the missing file left out
    assert f"{missing}: no such file" in err and "(the first 3 of 4 images)" in err
    assert_png(tmp_path / "cam.png")



def test_score_takes_the_folder_name_as_the_true_class(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    names = json.loads((tiny_run / "config.json").read_text())["class_names"]
    files = {c: sorted((sample_path() / c).iterdir())[:3] for c in ("CXR", "Hand", "HeadCT")}
    for c, paths in files.items():
        (tmp_path / "scans" / c).mkdir(parents=True)
        for f in paths:
            (tmp_path / "scans" / c / f.name).write_bytes(f.read_bytes())
    (tmp_path / "scans" / "unsorted").mkdir()
    (tmp_path / "scans" / "unsorted" / "x.jpeg").write_bytes(files["CXR"][0].read_bytes())
    status, out, err = _run([str(tiny_run), str(tmp_path / "scans"), "--score"])
    assert status == 0, err
    predicted = {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines()}
    assert len(predicted) == 10  # every image is predicted, the unsorted one too
    truth = [(Path(p).parent.name, c) for p, c in predicted.items() if Path(p).parent.name in names]
    wrong = sum(t != c for t, c in truth)
    assert f"score on 9 labelled images (1 image in folders that are no class name left out): {wrong} wrong" in err
    accuracy = float(err.split("\n")[3].split("|")[4])
    assert accuracy == pytest.approx((9 - wrong) / 9, abs=5e-5)
    matrix = err.split("columns: predicted)\n")[1].splitlines()
    counts = {row.split()[0]: list(map(int, row.split()[1:])) for row in matrix[1:]}
    assert sum(map(sum, counts.values())) == 9 and sum(counts["Hand"]) == 3 and sum(counts["BreastMRI"]) == 0
    assert counts["Hand"][names.index("Hand")] == sum(c == "Hand" for t, c in truth if t == "Hand")


def test_score_without_class_folders_says_so(tiny_run: Path, jpegs: list[Path], tmp_path: Path) -> None:  # noqa: F811
    loose = tmp_path / "x.jpeg"
    loose.write_bytes(jpegs[0].read_bytes())
    status, out, err = _run([str(tiny_run), str(loose), "--score"])
    assert status == 0 and out.count("\n") == 1
    assert "score: no image sits in a folder named after a class (AbdomenCT, BreastMRI" in err
