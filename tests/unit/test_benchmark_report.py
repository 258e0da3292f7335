"""A benchmark rewriting its page keeps the analysis written by hand below the KEEP marker."""

from __future__ import annotations

from benchmarks.report import KEEP, emit


def test_rewriting_a_page_keeps_what_is_below_the_marker(tmp_path, capsys):
    page = tmp_path / "page.md"
    emit(["# Figures", "old"], str(page))
    page.write_text(page.read_text() + f"\n{KEEP}\n\n## Why\nhand-written\n")
    emit(["# Figures", "new"], str(page))
    text = page.read_text()
    assert text.startswith("# Figures\nnew\n") and "old" not in text
    assert text.endswith(f"{KEEP}\n\n## Why\nhand-written\n")
    assert "# Figures\nnew" in capsys.readouterr().out


def test_a_page_without_the_marker_is_written_whole(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Old page\nwhatever\n")
    emit(["# Figures"], str(page))
    assert page.read_text() == "# Figures\n"
