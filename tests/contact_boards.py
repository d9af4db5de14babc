"""Sim boards with dry-contact inputs configured, written as real board files (so every test goes
through the loader's validation)."""

from __future__ import annotations

from pathlib import Path

from hal.board import Board, parse_board

REPO = Path(__file__).resolve().parents[1]
SIM_TOML = REPO / "boards" / "sim" / "board.toml"

DIM = """
[inputs.in1]
meaning = "dim_14a"
supervised = true
"""

DSO = """
[inputs.in2]
meaning = "dso_step"

[inputs.in3]
meaning = "dso_step"

[dso_steps]
none = 100
in2 = 60
in3 = 30
"in2+in3" = 0
"""

ENABLE = """
[inputs.in4]
meaning = "enable"
"""

TARIFF = """
[inputs.in4]
meaning = "tariff_window"
"""


def board_file(tmp_path: Path, extra: str, *, base: str | None = None) -> Path:
    """The sim board's file with ``extra`` TOML appended, in ``tmp_path``."""
    folder = tmp_path / "contacts"
    folder.mkdir(exist_ok=True)
    path = folder / "board.toml"
    text = SIM_TOML.read_text(encoding="utf-8") if base is None else base
    path.write_text(text + "\n" + extra, encoding="utf-8")
    return path


def contact_board(tmp_path: Path, extra: str) -> Board:
    return parse_board(board_file(tmp_path, extra))
