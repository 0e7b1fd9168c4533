"""README.md and .ci/run must agree, and the README's example code must run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", README, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = next(b for b in _bash_blocks() if "pytest" in b)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_ci_lints_and_type_checks_as_contributing_says() -> None:
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    block = re.search(r"<!-- ci-checks -->\n```bash\n(.*?)```", contributing, flags=re.S)
    assert block, "CONTRIBUTING.md lacks its <!-- ci-checks --> bash block"
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands and all(c in ci_lines for c in commands), (commands, ci_lines)
    assert ci_lines.index(commands[0]) > next(i for i, line in enumerate(ci_lines) if "pip install" in line)


def test_readme_opens_with_the_two_commands() -> None:
    blocks = _bash_blocks()
    assert "python -m minarn" in blocks[0] and "pytest" in blocks[1]
    assert README.index(blocks[0]) < README.index("## How the pieces fit together")


def test_readme_python_example_runs() -> None:
    code = re.findall(r"```python\n(.*?)```", README, flags=re.S)[0]
    namespace: dict = {"print": lambda *a, **k: None}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.count_params() == 1_624_131
    assert np.isfinite(namespace["loss"])


def test_readme_prediction_example_runs(monkeypatch) -> None:
    code = re.findall(r"```python\n(.*?)```", README, flags=re.S)[1]
    assert "load_model" in code and "predict" in code
    monkeypatch.chdir(ROOT)  # the example names the published weights relative to the repository
    shown: list = []
    namespace: dict = {"print": lambda *a, **k: shown.append(a)}
    exec(compile(code, "README.md", "exec"), namespace)
    probs = namespace["probs"]
    assert probs.shape == (1, 6) and abs(float(probs.sum()) - 1) < 1e-5
    assert shown[0][0] == "Hand" and shown[0][1] > 0.9  # a sample Hand X-ray, classified by the published model

