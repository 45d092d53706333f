"""docs/reproduction.md's tables are the committed run's table1.csv, number for number."""

from __future__ import annotations

from pathlib import Path

from lenshpc.evaluate.compare import comparison_markdown, render_document, rows_from_csv

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_reproduction_tables_equal_the_committed_table1_csv():
    doc = DOCS / "reproduction.md"
    text = doc.read_text()
    assert render_document(text, DOCS / "reproduction") == text, (
        "docs/reproduction.md differs from docs/reproduction/table1.csv: run "
        "python -m lenshpc.evaluate.compare docs/reproduction.md")
    for name in ("table1.csv", "metrics.csv", "psnr.csv"):
        assert (DOCS / "reproduction" / name).stat().st_size > 0


def test_a_changed_number_is_caught(tmp_path):
    folder = DOCS / "reproduction"
    text = (DOCS / "reproduction.md").read_text()
    csv_text = (folder / "table1.csv").read_text().splitlines()
    header, first = csv_text[0].split(","), csv_text[1].split(",")
    col = header.index("r2_theta_E_mean")
    first[col] = repr(float(first[col]) - 0.05)
    (tmp_path / "table1.csv").write_text("\n".join([csv_text[0], ",".join(first),
                                                    *csv_text[2:]]) + "\n")
    if (folder / "demo-table1.csv").is_file():
        (tmp_path / "demo-table1.csv").write_text((folder / "demo-table1.csv").read_text())
    assert render_document(text, tmp_path) != text


def test_comparison_lists_the_study_beside_each_run():
    rows = rows_from_csv(DOCS / "reproduction" / "table1.csv")
    table = comparison_markdown({"run": rows}).splitlines()
    assert table[0] == "| model | figure | study | run |"
    assert any(line.startswith("| model3 | PSNR median [dB] | 29.2 |") for line in table)
