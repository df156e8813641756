"""The one reader of a trace's files: read_lines and load_document, absent or damaged."""

from __future__ import annotations

from pathlib import Path

from infermeter.sidecar.trace_check import BadValue, load_document, number, read_lines


def _row(_number: int, line: str) -> tuple[float, float]:
    t = number(line, "t", low=0)
    return t, t


def _header(line: str) -> None:
    if line != "t":
        raise BadValue(f"header must be t, not {line!r}")


def test_read_lines_gives_the_readable_rows_and_names_each_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("t\n1\nx\n3\n0.5\n4\n")
    rows, problems = read_lines(path, _row, _header)
    assert rows == [1.0, 3.0, 4.0]
    assert [(p.line, p.t_from, p.t_to) for p in problems] == [(3, 1.0, 3.0), (5, 3.0, 4.0)]
    assert "is not a number" in problems[0].what and "backwards" in problems[1].what


def test_a_bad_header_fails_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("time\n1\n")
    rows, problems = read_lines(path, _row, _header)
    assert rows == [] and len(problems) == 1 and problems[0].whole_file


def test_a_missing_file_is_a_problem_unless_it_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    assert read_lines(path, _row, optional=True) == ([], [])
    rows, problems = read_lines(path, _row)
    assert rows == [] and len(problems) == 1
    assert problems[0].whole_file and "cannot be read" in problems[0].what


def test_max_gap_drops_a_row_far_from_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("1\n2\n99999\n3\n")
    rows, problems = read_lines(path, _row, max_gap_s=60.0)
    assert rows == [1.0, 2.0, 3.0] and [p.line for p in problems] == [3]


def test_an_absent_document_reads_as_what_the_caller_says(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    assert load_document(path, absent={}) == ({}, [])
    data, problems = load_document(path)
    assert data is None and len(problems) == 1 and "cannot be read" in problems[0].what
    path.write_text('{"host": "a",\n "t": NaN}\n')
    data, problems = load_document(path, absent={})
    assert data is None and [(p.line, p.whole_file) for p in problems] == [(2, True)]
    path.write_text("null\n")  # present but null: not the same as absent
    assert load_document(path, absent={}) == (None, [])
