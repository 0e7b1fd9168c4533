"""tools/robustness.py: the model card's table is what the published weights give, and --check notices a
table that is not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools import robustness


@pytest.fixture(scope="module")
def table() -> str:
    from minarn.model import load_model

    return robustness.robustness_table(load_model(robustness.MODEL))


def test_model_card_table_is_what_the_published_model_gives(table: str) -> None:
    old, new = robustness.render(robustness.CARD, table)
    assert old == new, "results/MODEL_CARD.md is out of date: run python tools/robustness.py --write"


def test_table_covers_every_set(table: str) -> None:
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == len(robustness.TRANSFORMS) + 1 + 3  # transforms, noise, three constant images
    assert rows[0].startswith("| sample as it is | ") and " of 600 |" in rows[0]
    assert "called" in rows[-1] and "| no class |" in rows[-1]


def test_check_and_write_on_a_stale_card(table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "MODEL_CARD.md"
    shutil.copy(robustness.CARD, card)
    text = card.read_text()
    card.write_text(text.replace("| sample as it is |", "| sample as it was |"))
    monkeypatch.setattr(robustness, "robustness_table", lambda model: table)  # the model's table, computed once
    assert robustness.main(["--check", "--card", str(card)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert robustness.main(["--write", "--card", str(card)]) == 0
    assert card.read_text() == text
    assert robustness.main(["--check", "--card", str(card)]) == 0
    card.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="exactly one"):
        robustness.main(["--check", "--card", str(card)])
