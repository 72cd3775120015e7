"benchmarks/results.py: each script rewrites only its own block of RESULTS.md."
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results import markers, read_block, write_block  # noqa: E402

START = "# Results\n\n## A\n\nnotes of A\n\n## B\n\nrows of B\n"


def test_first_write_goes_under_its_section(tmp_path):
    p = tmp_path / "R.md"
    p.write_text(START)
    write_block("x.py", "| 1 |", "## A", p)
    assert p.read_text() == "# Results\n\n## A\n\n<!-- x.py: begin -->\n| 1 |\n<!-- x.py: end -->\n\nnotes of A\n\n## B\n\nrows of B\n"


def test_rewrite_replaces_only_its_block(tmp_path):
    p = tmp_path / "R.md"
    p.write_text(START)
    write_block("x.py", "| 1 |", "## A", p)
    write_block("y.py", "| y |", "## B", p)
    write_block("x.py", "| 2 |", "## A", p)
    assert read_block("x.py", p) == "| 2 |"
    assert read_block("y.py", p) == "| y |"
    assert p.read_text().count("<!-- x.py: begin -->") == 1
    assert "notes of A" in p.read_text()


def test_missing_section_is_appended(tmp_path):
    p = tmp_path / "R.md"
    p.write_text(START)
    write_block("z.py", "z", "## C", p)
    assert p.read_text().endswith("\n\n## C\n\n<!-- z.py: begin -->\nz\n<!-- z.py: end -->\n")


def test_read_block_of_absent_name_is_empty(tmp_path):
    p = tmp_path / "R.md"
    p.write_text(START)
    assert read_block("nosuch.py", p) == ""
    assert markers("a.py") == ("<!-- a.py: begin -->", "<!-- a.py: end -->")


def test_report_writes_json_prints_and_writes(tmp_path, capsys):
    from results import report
    written = []
    report({"a": 1}, "| t |", json_path=str(tmp_path / "r.json"), write=written.append)
    assert (tmp_path / "r.json").read_text() == '{\n "a": 1\n}'
    assert capsys.readouterr().out == "| t |\n"
    assert written == ["| t |"]
