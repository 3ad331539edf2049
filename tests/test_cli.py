"""The ``saedb`` command line: every output format, SQL from stdin and with parameters, one
clear error line per failure, and init -> ingest -> info / bad-rows / optimize on a store built
through the CLI with the real reader (a handful of short documents, the tiny test SAE).

Most tests call ``saedb.cli.main`` in-process; a few run ``python -m saedb.cli`` where the
process boundary is the point (stdin pipes, exit status, Ctrl-C, what gets imported).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from decimal import Decimal
from types import SimpleNamespace

import pyarrow as pa
import pytest

import saedb
from saedb import __version__
from saedb.cli import build_parser, main
from saedb.output import render
from tests.conftest import REPO, fortunes, write_jsonl
from tests.proc_util import READ, default_sigint, wait_until_blocked

LONG = "x" * 499 + "y"  # 500 characters; the last one shows whether anything was cut


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "saedb.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def error_line(err: str) -> str:
    """The one line a failing command writes to stderr."""
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    ap = build_parser()
    (sub,) = (a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.fixture
def empty_store(tmp_path) -> str:
    """A store with its schema and catalog but no SAE: enough for SQL, no torch needed."""
    path = tmp_path / "empty.duckdb"
    saedb.open(path).close()
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory, sae_dir) -> SimpleNamespace:
    """A store made through the CLI: init, an ingest with two bad lines, a --quiet ingest
    with one more. Each step's exit code and output are kept for the tests to read."""
    d = tmp_path_factory.mktemp("cli")
    store = str(d / "corpus.duckdb")
    good = fortunes("computers", 4)
    mixed = d / "mixed.jsonl"
    mixed.write_text(
        "\n".join(
            [
                json.dumps(good[0]),
                json.dumps(good[1]),
                '{"id": "broken", "text": ',  # line 3: malformed JSON
                json.dumps(good[2]),
                '{"id": "no-text"}',  # line 5: no text field
                json.dumps(good[3]),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    love = fortunes("love", 2)
    second = write_jsonl(d / "second.jsonl", [love[0], {"id": "empty", "text": ""}, love[1]])

    def step(*argv: str) -> SimpleNamespace:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
        return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())

    init = step("init", store, "--sae", str(sae_dir), "--sae-name", "tiny")
    first = step("ingest", store, str(mixed), "--dataset", "mixed")
    quiet = step("ingest", store, str(second), "--dataset", "second", "--quiet")
    return SimpleNamespace(
        store=store, mixed=mixed, second=second, init=init, first=first, quiet=quiet
    )


# -- saedb sql: formats ---------------------------------------------------------------------

QUERY = f"SELECT 7 AS n, '{LONG}' AS long_text, NULL AS missing, [1, 2] AS xs"


@pytest.mark.parametrize("fmt", ["csv", "json", "nl"])
def test_sql_machine_formats_keep_every_value_in_full(empty_store, capsys, fmt) -> None:
    assert main(["sql", empty_store, QUERY, "--format", fmt]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert rows == [{"n": "7", "long_text": LONG, "missing": "", "xs": "[1, 2]"}]
    else:
        rows = json.loads(out) if fmt == "json" else [json.loads(x) for x in out.splitlines()]
        assert rows == [{"n": 7, "long_text": LONG, "missing": None, "xs": [1, 2]}]


def test_sql_table_format_marks_shortened_cells(empty_store, capsys) -> None:
    assert main(["sql", empty_store, QUERY]) == 0  # table is the default
    out = capsys.readouterr().out
    assert LONG not in out
    (row,) = (line for line in out.splitlines() if line.startswith("| 7 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("…") and set(cells[1][:-1]) == {"x"}
    assert cells[2] == "" and cells[3] == "[1, 2]"
    assert out.splitlines()[-1] == "1 row"


def test_sql_from_stdin(empty_store, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 40 + 2 AS answer\n"))
    assert main(["sql", empty_store, "-", "-f", "csv"]) == 0
    assert capsys.readouterr().out == "answer\n42\n"


def test_sql_from_a_real_pipe_writes_nothing_on_stderr(empty_store) -> None:
    done = run_cli("sql", empty_store, "-", "-f", "nl", stdin="SELECT 'piped' AS how")
    assert (done.returncode, done.stdout, done.stderr) == (0, '{"how": "piped"}\n', "")


def test_sql_named_parameters(empty_store, capsys) -> None:
    argv = ["sql", empty_store, "SELECT $who AS who, $n::INTEGER + 1 AS next, $eq AS eq"]
    argv += ["--param", "who=Ada Lovelace", "-p", "n=41", "-p", "eq=a=b", "-f", "json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == [{"who": "Ada Lovelace", "next": 42, "eq": "a=b"}]


def test_sql_parameters_are_bound_not_spliced(empty_store, capsys) -> None:
    evil = "x'; DROP TABLE documents; --"
    assert main(["sql", empty_store, "SELECT $v AS v", "-p", f"v={evil}", "-f", "csv"]) == 0
    assert capsys.readouterr().out == f"v\n{evil}\n"
    assert main(["sql", empty_store, "SELECT count(*) AS n FROM documents", "-f", "csv"]) == 0
    assert capsys.readouterr().out == "n\n0\n"


# -- saedb sql: errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "duckdb_says"),
    [
        ("SELEC 1", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT nope FROM documents", 'Referenced column "nope" not found'),
        ("SELECT * FROM no_such_table", "Table with name no_such_table does not exist"),
    ],
)
def test_bad_sql_is_one_error_line_with_duckdbs_message(
    empty_store, capsys, query, duckdb_says
) -> None:
    assert main(["sql", empty_store, query]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert duckdb_says in error_line(err)


def test_bad_sql_through_the_process(empty_store) -> None:
    done = run_cli("sql", empty_store, "SELEC 1")
    assert done.returncode == 1 and done.stdout == ""
    assert "syntax error" in error_line(done.stderr)


def test_param_without_equals_sign(empty_store, capsys) -> None:
    assert main(["sql", empty_store, "SELECT $a", "--param", "a"]) == 2
    assert "--param expects NAME=VALUE, got 'a'" in error_line(capsys.readouterr().err)


def test_missing_and_extra_parameters_name_them(empty_store, capsys) -> None:
    assert main(["sql", empty_store, "SELECT $a, $b", "-p", "a=1"]) == 1
    assert ": b" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_empty_query(empty_store, capsys, monkeypatch, query) -> None:
    assert main(["sql", empty_store, query]) == 2
    assert "no SQL given" in error_line(capsys.readouterr().err)
    monkeypatch.setattr(sys, "stdin", io.StringIO(query))
    assert main(["sql", empty_store, "-"]) == 2
    assert "no SQL given" in error_line(capsys.readouterr().err)


def test_sql_is_read_only_unless_write(empty_store, capsys) -> None:
    insert = "INSERT INTO settings (key, value) VALUES ('colour', 'blue')"
    assert main(["sql", empty_store, insert]) == 1
    assert "read-only" in error_line(capsys.readouterr().err)
    assert main(["sql", empty_store, insert, "--write"]) == 0
    capsys.readouterr()
    check = "SELECT value FROM settings WHERE key = 'colour'"
    assert main(["sql", empty_store, check, "-f", "csv"]) == 0
    assert capsys.readouterr().out == "value\nblue\n"


def test_sql_on_a_missing_store_says_how_to_create_it(tmp_path, capsys) -> None:
    path = tmp_path / "nowhere.duckdb"
    assert main(["sql", str(path), "SELECT 1"]) == 1
    assert f"saedb init {path}" in error_line(capsys.readouterr().err)
    assert not path.exists()


@pytest.mark.parametrize("command", ["sql", "info", "bad-rows"])
def test_unknown_output_format_is_rejected_by_argparse(empty_store, capsys, command) -> None:
    argv = [command, empty_store] + (["SELECT 1"] if command == "sql" else []) + ["-f", "xml"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_one_line(empty_store) -> None:
    # Interrupted while waiting for SQL on stdin: a real SIGINT in a real process. (DuckDB 2.0
    # turns a Ctrl-C during a query into RuntimeError('Query interrupted'), which main() also
    # maps to 130, but it does not always notice the signal, so that is no test to rely on.)
    code = textwrap.dedent(
        f"""
        import sys
        from saedb.cli import build_parser, main
        build_parser()
        print("ready", flush=True)
        sys.exit(main(["sql", {empty_store!r}, "-"]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout.readline() == "ready\n"  # type: ignore[union-attr]
        wait_until_blocked(proc.pid, READ)  # reading stdin, not inside DuckDB opening the store
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (130, "", "interrupted\n")


# -- init / ingest ----------------------------------------------------------------------------


def test_init_reports_the_registered_sae(built) -> None:
    assert built.init.rc == 0
    assert built.init.out == (
        f"{built.store}: SAE 'tiny' (id 1) on HuggingFaceTB/SmolLM2-135M-Instruct "
        "blocks.2.hook_resid_post, topk 576->512\n"
    )


def test_ingest_prints_a_summary_and_the_bad_rows(built) -> None:
    assert built.first.rc == 0
    assert re.fullmatch(
        r"ingested 4 documents \([\d,]+ tokens\) into 'mixed' in [\d.]+s \([\d,]+ tok/s\); "
        r"0 already there, 2 bad rows\n",
        built.first.out,
    ), built.first.out
    bad = [line for line in built.first.err.splitlines() if "bad row:" in line]
    assert len(bad) == 2
    assert f"{built.mixed}:3" in bad[0] and f"{built.mixed}:5" in bad[1]
    assert "missing field 'text'" in bad[1]


def test_quiet_ingest_prints_one_json_summary(built) -> None:
    assert built.quiet.rc == 0
    (line,) = built.quiet.out.splitlines()
    summary = json.loads(line)
    assert summary["run_id"] == 2
    assert (summary["documents"], summary["bad_rows"], summary["skipped_existing"]) == (2, 1, 0)
    assert summary["tokens"] > 0 and summary["seconds"] >= 0
    assert "doc/s" not in built.quiet.err  # no progress bar
    with saedb.open(built.store, read_only=True) as store:
        assert store.sql("SELECT count(*) AS n FROM documents").n[0] == 6


def test_strict_ingest_stops_at_the_first_bad_row(tmp_path, store_path, capsys) -> None:
    src = tmp_path / "strict.jsonl"
    src.write_text('{"id": 1, "text": "fine"}\n{"id": 2}\n', encoding="utf-8")
    rc = main(["ingest", str(store_path), str(src), "--dataset", "s", "--strict", "-q"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    line = error_line(err)
    assert f"{src}:2:" in line and "--strict" in line
    with saedb.open(store_path, read_only=True) as store:
        assert store.sql("SELECT count(*) AS n FROM documents").n[0] == 0
        assert store.sql("SELECT status FROM ingest_runs").status.tolist() == ["failed"]


def test_ingest_of_a_missing_file(empty_store, tmp_path, capsys) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["ingest", empty_store, str(missing), "--dataset", "d"]) == 1
    assert f"cannot read {missing}: no such file" in error_line(capsys.readouterr().err)


def test_ingest_into_a_store_without_an_sae_says_how_to_add_one(
    empty_store, tmp_path, capsys
) -> None:
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    assert main(["ingest", empty_store, str(src), "--dataset", "d"]) == 1
    assert f"saedb init {empty_store}" in error_line(capsys.readouterr().err)


def test_ingest_rejects_bad_options_with_exit_2(empty_store, tmp_path, capsys) -> None:
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    base = ["ingest", empty_store, str(src), "--dataset", "d"]
    assert main(base + ["--input-format", "xml"]) == 2
    assert "unknown format 'xml'. Valid formats are: " in error_line(capsys.readouterr().err)
    assert main(base + ["--window-tokens", "64", "--window-overlap", "64"]) == 2
    assert "window_overlap" in error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exc:  # --dataset is required
        main(["ingest", empty_store, str(src)])
    assert exc.value.code == 2
    assert "--dataset" in capsys.readouterr().err


# -- info / bad-rows / optimize ----------------------------------------------------------------


def test_info_lists_datasets_saes_and_runs(built, capsys) -> None:
    assert main(["info", built.store]) == 0
    out = capsys.readouterr().out
    for title in ("# datasets", "# saes", "# ingest runs"):
        assert title in out
    assert "mixed" in out and "second" in out and "tiny" in out

    assert main(["info", built.store, "-f", "nl"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    datasets = {r["name"]: r["documents"] for r in rows if "documents" in r}
    assert datasets == {"mixed": 4, "second": 2}
    (sae,) = (r for r in rows if "architecture" in r)
    assert (sae["name"], sae["d_in"], sae["d_sae"]) == ("tiny", 576, 512)
    runs = [r for r in rows if "status" in r]
    assert [(r["run_id"], r["status"], r["n_docs"], r["n_bad_rows"]) for r in runs] == [
        (1, "done", 4, 2),
        (2, "done", 2, 1),
    ]
    assert runs[0]["source"] == str(built.mixed) and runs[1]["dataset"] == "second"


def test_bad_rows_lists_file_and_line_and_filters_by_run(built, capsys) -> None:
    assert main(["bad-rows", built.store, "-f", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["source"], r["line"]) for r in rows] == [
        (1, str(built.mixed), 3),
        (1, str(built.mixed), 5),
        (2, str(built.second), 2),
    ]
    assert rows[1]["raw"] == '{"id": "no-text"}'

    assert main(["bad-rows", built.store, "--run", "2", "-f", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert (row["run_id"], row["source"], row["line"]) == ("2", str(built.second), "2")

    assert main(["bad-rows", built.store, "--run", "99"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 rows"

    assert main(["bad-rows", built.store]) == 0
    table = capsys.readouterr().out
    assert "mixed.jsonl" in table and table.splitlines()[-1] == "3 rows"


def test_optimize_keeps_every_row(built, tmp_path, capsys) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(built.store, copy)
    everything = "SELECT * FROM doc_latents ORDER BY ALL"
    counts = (
        "SELECT (SELECT count(*) FROM documents) AS docs, "
        "(SELECT count(*) FROM doc_encodings) AS enc, (SELECT count(*) FROM doc_latents) AS lat"
    )
    with saedb.open(copy, read_only=True) as store:
        before, before_counts = store.arrow(everything), store.arrow(counts)
    assert before.num_rows > 0

    assert main(["optimize", str(copy)]) == 0
    assert "re-clustered" in capsys.readouterr().out

    with saedb.open(copy, read_only=True) as store:
        assert store.arrow(everything).equals(before)
        assert store.arrow(counts).equals(before_counts)
        stored_order = store.sql("SELECT sae_id, latent_id, doc_id FROM doc_latents ORDER BY rowid")
    keys = list(stored_order.itertuples(index=False, name=None))
    assert keys == sorted(keys)


# -- help, version ------------------------------------------------------------------------------


def test_top_level_help_names_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in subcommands():
        assert re.search(rf"^\s+{re.escape(name)}\b", out, re.MULTILINE), name
    assert "--version" in out


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_command_help_mentions_every_option(command, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    parser = subcommands()[command]
    for action in parser._actions:
        for flag in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out), (command, flag)
        if not action.option_strings:
            assert action.dest in out or (action.metavar or "") in out


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"saedb {__version__}\n"


def test_no_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: saedb" in capsys.readouterr().err


# -- no torch on the analyst side -------------------------------------------------------------

HEAVY = ("torch", "transformers")


def test_importing_saedb_and_building_the_parser_loads_no_torch() -> None:
    code = (
        "import sys, saedb, saedb.cli; saedb.cli.build_parser(); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def test_sql_and_info_run_without_torch(built) -> None:
    code = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from saedb.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            rcs = [main(["sql", {built.store!r}, "SELECT count(*) FROM documents"]),
                   main(["info", {built.store!r}]),
                   main(["bad-rows", {built.store!r}])]
        assert "# ingest runs" in out.getvalue(), out.getvalue()
        print(rcs, sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "[0, 0, 0] []\n", "")


# -- saedb.output.render ----------------------------------------------------------------------


def _strict_json(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


MIXED = pa.table(
    {
        "i": pa.array([1, None], pa.int64()),
        "f": pa.array([math.nan, -math.inf]),
        "tags": pa.array([["a", "b"], None], pa.list_(pa.string())),
        "meta": pa.array(
            [{"k": 1, "v": [1.5, math.inf]}, {"k": None, "v": []}],
            pa.struct([("k", pa.int64()), ("v", pa.list_(pa.float64()))]),
        ),
        "s": pa.array(["日本語 ✓ é", 'line\nbreak, "quoted"']),
    }
)


def test_render_json_and_nl_nest_and_stay_valid_json() -> None:
    want = [
        {
            "i": 1,
            "f": "nan",
            "tags": ["a", "b"],
            "meta": {"k": 1, "v": [1.5, "inf"]},
            "s": "日本語 ✓ é",
        },
        {
            "i": None,
            "f": "-inf",
            "tags": None,
            "meta": {"k": None, "v": []},
            "s": 'line\nbreak, "quoted"',
        },
    ]
    out = render(MIXED, "json")
    assert "日本語" in out  # not \u-escaped
    assert _strict_json(out) == want
    lines = render(MIXED, "nl").splitlines()
    assert [_strict_json(x) for x in lines] == want


def test_render_csv_round_trips_nulls_nesting_and_unicode() -> None:
    rows = list(csv.reader(io.StringIO(render(MIXED, "csv"))))
    assert rows[0] == ["i", "f", "tags", "meta", "s"]
    assert rows[1] == ["1", "nan", '["a", "b"]', '{"k": 1, "v": [1.5, "inf"]}', "日本語 ✓ é"]
    assert rows[2] == ["", "-inf", "", '{"k": null, "v": []}', 'line\nbreak, "quoted"']
    assert _strict_json(rows[1][3]) == {"k": 1, "v": [1.5, "inf"]}


def test_render_table_shows_nulls_blank_and_keeps_one_line_per_row() -> None:
    out = render(MIXED, "table")
    lines = out.splitlines()
    assert len(lines) == 3 + 2 + 1 + 1  # rule, header, rule, 2 rows, rule, count
    first, second = (
        [c.strip() for c in line.strip("|").split("|")] for line in (lines[3], lines[4])
    )
    assert first[:3] == ["1", "nan", '["a", "b"]']
    assert second[:3] == ["", "-inf", ""]
    assert "line⏎break" in lines[4]
    assert lines[-1] == "2 rows"


def test_render_table_shortens_by_characters_not_bytes() -> None:
    text = "é" * 200
    out = render(pa.table({"s": [text]}), "table")
    (cell,) = (line.strip("| ") for line in out.splitlines() if "é" in line)
    assert cell.endswith("…") and 10 < len(cell) < 200 and set(cell[:-1]) == {"é"}
    for fmt in ("csv", "json", "nl"):
        assert text in render(pa.table({"s": [text]}), fmt)


def test_render_json_hugeint_is_a_number_decimal_keeps_its_digits() -> None:
    # sum() of integers is a HUGEINT in DuckDB: Arrow decimal128(38, 0).
    t = pa.table(
        {
            "total": pa.array([Decimal(12345678901234567890123)], pa.decimal128(38, 0)),
            "price": pa.array([Decimal("1.50")], pa.decimal128(4, 2)),
        }
    )
    assert _strict_json(render(t, "json")) == [{"total": 12345678901234567890123, "price": "1.50"}]
    assert render(t, "csv") == "total,price\n12345678901234567890123,1.50\n"


def test_sql_json_sums_are_numbers(empty_store, capsys) -> None:
    q = "SELECT sum(x) AS s FROM (VALUES (1), (2)) t(x)"
    assert main(["sql", empty_store, q, "-f", "nl"]) == 0
    assert capsys.readouterr().out == '{"s": 3}\n'


def test_render_keeps_columns_that_share_a_name() -> None:
    # SELECT * FROM a JOIN b ON ... returns two columns of the same name.
    t = pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3])], ["x", "x", "x_1"])
    assert _strict_json(render(t, "json")) == [{"x": 1, "x_1": 2, "x_1_1": 3}]
    assert render(t, "csv") == "x,x,x_1\n1,2,3\n"
    assert "| 1 | 2 | 3   |" in render(t, "table")


def test_render_empty_result_and_unknown_format() -> None:
    empty = pa.table({"a": pa.array([], pa.int64())})
    assert render(empty, "json") == "[]\n"
    assert render(empty, "nl") == ""
    assert render(empty, "csv") == "a\n"
    assert render(empty, "table").splitlines()[-1] == "0 rows"
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        render(empty, "xml")
