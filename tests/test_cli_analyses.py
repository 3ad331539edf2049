"""The analysis commands: ``saedb diff``, ``correlations``, ``cluster`` and ``search``.

They run on the planted store of tests/test_cluster.py (datasets 'left' and 'right' firing
disjoint latents, a few documents firing none of them), built with pyarrow: no reader model.
Each command is checked in every output format against the SQL macro it runs, with its plot
written as a real PNG file, and with its errors as one line and the documented exit code.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from saedb.cli import main
from saedb.output import render
from tests.conftest import REPO
from tests.test_cli import error_line
from tests.test_cluster import LEFT, N_PER_SIDE, N_SILENT, RIGHT, build_planted_store

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> str:
    """The planted store, for the commands that only read it."""
    return str(build_planted_store(tmp_path_factory.mktemp("analyses") / "planted.duckdb"))


@pytest.fixture
def fresh(tmp_path) -> str:
    """A planted store of its own, for the commands that write (cluster, --refresh)."""
    return str(build_planted_store(tmp_path / "planted.duckdb"))


def macro(store: str, sql: str) -> list[dict]:
    """The rows of a query straight from DuckDB, as `--format json` writes them."""
    with duckdb.connect(store, read_only=True) as con:
        return json.loads(render(con.sql(sql).to_arrow_table(), "json"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000


def rows_of(out: str, fmt: str) -> list[dict]:
    if fmt == "json":
        return json.loads(out)
    if fmt == "nl":
        return [json.loads(line) for line in out.splitlines()]
    return list(csv.DictReader(io.StringIO(out)))


# -- diff ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "nl", "csv"])
def test_diff_prints_the_macro_result_in_every_format(shared, capsys, fmt) -> None:
    rc, out, err = run(capsys, "diff", shared, "left", "right", "--limit", "0", "-f", fmt)
    assert (rc, err) == (0, "")
    want = macro(shared, "SELECT * FROM diff('left', 'right')")
    got = rows_of(out, fmt)
    assert [str(r["latent_id"]) for r in got] == [str(r["latent_id"]) for r in want]
    assert len(got) == len(LEFT) + len(RIGHT) + 1  # the noise latent fires on both sides
    first = got[0]
    assert int(first["latent_id"]) in LEFT and float(first["freq_b"]) == 0.0


def test_diff_table_limit_and_filters(shared, capsys) -> None:
    rc, out, _ = run(capsys, "diff", shared, "left", "right", "--limit", "2")
    assert rc == 0 and out.splitlines()[-1] == "2 rows"
    rc, out, _ = run(capsys, "diff", shared, "left", "right", "--max-freq", "0.9", "-f", "json")
    assert rc == 0 and 20 not in [r["latent_id"] for r in json.loads(out)]


def test_diff_rest_and_metadata(shared, capsys) -> None:
    rc, out, _ = run(capsys, "diff", shared, "left", "--rest", "-f", "json", "--limit", "0")
    want = macro(shared, "SELECT * FROM diff_one_vs_rest('left')")
    assert rc == 0 and json.loads(out) == want
    rc, out, _ = run(capsys, "diff", shared, "left", "--rest", "right", "-f", "nl")
    assert rc == 0 and len(out.splitlines()) == 7

    argv = ["diff", shared, "--metadata", "parity", "--values", "odd", "even", "-f", "json"]
    rc, out, _ = run(capsys, *argv, "--limit", "0")
    want = macro(shared, "SELECT * FROM diff_metadata('parity', 'odd', 'even')")
    assert rc == 0 and [r["latent_id"] for r in json.loads(out)] == [r["latent_id"] for r in want]
    rc, out, _ = run(capsys, "diff", shared, "left", *argv[2:])  # inside one dataset
    sizes = {(r["size_a"], r["size_b"]) for r in json.loads(out)}
    assert rc == 0 and sizes == {(N_PER_SIDE // 2, N_PER_SIDE // 2)}


def test_diff_plot_is_a_png(shared, tmp_path, capsys) -> None:
    png = tmp_path / "diff.png"
    rc, out, err = run(capsys, "diff", shared, "left", "right", "--plot", str(png))
    assert rc == 0 and out.splitlines()[-1] == "7 rows"
    assert err == f"plot written to {png}\n"
    assert_png(png)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["left"], 2, "diff needs two datasets"),
        (["left", "right", "--rest"], 2, "give A only"),
        (["--metadata", "parity"], 2, "--metadata KEY and --values A B go together"),
        (["left", "--rest", "--metadata", "p", "--values", "a", "b"], 2, "cannot be combined"),
        (["left", "nowhere"], 1, "no dataset named nowhere"),
        (["left", "right", "--sae", "nosuch"], 2, "SAE 'nosuch' not found"),
        (["left", "right", "--limit", "-1"], 2, "--limit must be 0 or more"),
        (["left", "right", "--plot", "/nonexistent/dir/x.png"], 1, "cannot write the plot"),
    ],
)
def test_diff_errors(shared, capsys, argv, code, message) -> None:
    rc, out, err = run(capsys, "diff", shared, *argv)
    assert (rc, out) == (code, "")
    assert message in error_line(err)


# -- correlations ----------------------------------------------------------------------------


def test_correlations_targets(shared, tmp_path, capsys) -> None:
    png = tmp_path / "targets.png"
    argv = ["correlations", shared, "--targets", "1,7", "--min-count", "3", "-f", "json"]
    rc, out, _ = run(capsys, *argv, "--plot", str(png))
    want = macro(shared, "SELECT * FROM npmi_targets([1, 7], min_count := 3) LIMIT 20")
    assert rc == 0 and json.loads(out) == want
    assert {r["target_latent"] for r in want} == {1, 7}
    assert_png(png)


def test_correlations_pairs_live_then_stored_are_the_same(fresh, tmp_path, capsys) -> None:
    rc, live, _ = run(capsys, "correlations", fresh, "--limit", "0", "-f", "json")
    want = macro(fresh, "SELECT * FROM npmi()")
    assert rc == 0 and json.loads(live) == want
    assert (json.loads(live)[0]["latent_i"], json.loads(live)[0]["latent_j"]) == (8, 9)

    png = tmp_path / "pairs.png"
    argv = ["correlations", fresh, "--refresh", "-q", "--limit", "0", "-f", "json"]
    rc, stored, err = run(capsys, *argv, "--plot", str(png))
    assert rc == 0 and err == f"plot written to {png}\n"
    assert json.loads(stored) == json.loads(live)
    assert macro(fresh, "SELECT count(*) AS n FROM latent_cooccurrence")[0]["n"] == len(want)
    assert_png(png)
    # read from the table now, a stricter min_count filters it
    rc, out, _ = run(capsys, "correlations", fresh, "--min-count", "15", "-f", "json")
    assert json.loads(out) == [r for r in json.loads(live) if r["n_both"] >= 15]


def test_correlations_errors(shared, capsys) -> None:
    rc, _, err = run(capsys, "correlations", shared, "--targets", "1", "--refresh")
    assert rc == 2 and "does not go with --targets" in error_line(err)
    rc, _, err = run(capsys, "correlations", shared, "--targets", "a,b")
    assert rc == 2 and "--targets expects latent ids" in error_line(err)
    rc, _, err = run(capsys, "correlations", shared, "--datasets", "nowhere")
    assert rc == 1 and "nowhere" in error_line(err)


# -- cluster ---------------------------------------------------------------------------------


def test_cluster_prints_and_stores_the_clusters(fresh, tmp_path, capsys) -> None:
    png = tmp_path / "clusters.png"
    latents = ",".join(str(x) for x in (*LEFT, *RIGHT))
    argv = ["cluster", fresh, "--latents", latents, "--k", "2", "-f", "json"]
    rc, out, err = run(capsys, *argv, "--plot", str(png))
    assert rc == 0
    assert err.splitlines()[0].startswith("cluster run 1: 86 documents in 2 clusters, 6 with")
    rows = json.loads(out)
    assert [(r["cluster"], r["n_docs"]) for r in rows] == [
        (0, N_PER_SIDE),
        (1, N_PER_SIDE),
        (-1, N_SILENT),
    ]
    assert {frozenset(r["top_latents"]) for r in rows[:2]} == {frozenset(LEFT), frozenset(RIGHT)}
    stored = macro(
        fresh, "SELECT cluster, count(*) AS n FROM cluster_assignments GROUP BY ALL ORDER BY n"
    )
    assert sorted(r["n"] for r in stored) == [N_SILENT, N_PER_SIDE, N_PER_SIDE]
    assert_png(png)

    rc, out, _ = run(capsys, "cluster", fresh, "--latents", "1,2,3", "--datasets", "left")
    assert rc == 0 and "no listed latent fired" not in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--latents", "x"], 2, "--latents expects latent ids"),
        (["--latents", "1", "--k", "1"], 2, "k must be at least 2"),
        (["--latents", "1", "--top", "0"], 2, "--top must be at least 1"),
        (["--latents", "1", "--datasets", "nowhere"], 1, "no dataset named nowhere"),
    ],
)
def test_cluster_errors(fresh, capsys, argv, code, message) -> None:
    rc, out, err = run(capsys, "cluster", fresh, *argv)
    assert (rc, out) == (code, "")
    assert message in error_line(err)


def test_cluster_never_creates_a_store(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.duckdb"
    rc, _, err = run(capsys, "cluster", str(missing), "--latents", "1")
    assert rc == 1 and "no store at" in error_line(err) and not missing.exists()


# -- search ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "nl"])
def test_search_by_latent_weights(shared, tmp_path, capsys, fmt) -> None:
    png = tmp_path / "scores.png"
    rc, out, _ = run(
        capsys, "search", shared, "1, 7:2.0", "--k", "5", "-f", fmt, "--plot", str(png)
    )
    assert rc == 0
    assert_png(png)
    want = macro(
        shared,
        "SELECT * FROM retrieve([{'latent_id': 1, 'weight': 1.0}, "
        "{'latent_id': 7, 'weight': 2.0}], k := 5)",
    )
    if fmt == "table":
        assert out.splitlines()[-1] == "5 rows"
        return
    got = rows_of(out, fmt)
    assert [str(r["doc_id"]) for r in got] == [str(r["doc_id"]) for r in want]
    assert {r["dataset"] for r in got} == {"right"}  # latent 7 weighs twice as much


def test_search_in_datasets(shared, capsys) -> None:
    rc, out, _ = run(capsys, "search", shared, "1,7:2", "--datasets", "left", "-f", "json")
    assert rc == 0 and {r["dataset"] for r in json.loads(out)} == {"left"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("12,abc", "cannot read 'abc'"),
        ("12,4x0", "cannot read '4x0'"),
        ("  ", "empty query"),
    ],
)
def test_search_errors(shared, capsys, query, message) -> None:
    rc, out, err = run(capsys, "search", shared, query)
    assert (rc, out) == (2, "")
    assert message in error_line(err)


def test_search_by_text_needs_label_embeddings(shared, capsys) -> None:
    # a text query is matched against label embeddings; this store has no labels
    rc, out, err = run(capsys, "search", shared, "error messages about disks")
    assert (rc, out) == (1, "")
    line = error_line(err)
    assert "saedb label" in line and "--all-firing" in line and "12,40:2.0" in line


def test_the_parser_and_the_cluster_module_load_no_heavy_library() -> None:
    heavy = ("sklearn", "scipy", "matplotlib", "torch")
    code = (
        "import sys, saedb.cli, saedb.cluster; saedb.cli.build_parser(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")
