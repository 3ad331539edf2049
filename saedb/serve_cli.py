"""``saedb serve``: the command line of the Postgres-protocol server (``saedb.server``)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
from pathlib import Path

from saedb.errors import ConfigError

DESCRIPTION = """\
Serve the store to BI tools and SQL clients over the Postgres wire protocol (psql, pgJDBC,
psycopg, SQLAlchemy, ODBC). This process becomes the store's only writer: `saedb ingest` on
the same store then sends its batches through this server, and readers keep working;
`saedb export` and `saedb sql-export` read a consistent snapshot through it.
Users are read-only unless given the writer role; password authentication is SCRAM-SHA-256.
The default user's password comes from $SAEDB_SERVE_PASSWORD, else from the users file
(STORE.users.json, salted verifiers only), else one is generated and printed once."""

EPILOG = """\
examples:
  SAEDB_SERVE_PASSWORD=secret saedb serve corpus.duckdb
  PGPASSWORD=secret psql -h 127.0.0.1 -p 5433 -U saedb -d corpus -c '\\dt'
  saedb serve corpus.duckdb --add-user analyst          # asks for the password
  saedb serve corpus.duckdb --host 0.0.0.0 --tls-cert server.pem --tls-key server.key
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from saedb.options import add_options
    from saedb.server import ServeConfig

    p = sub.add_parser(
        "serve",
        help="serve the store over the Postgres protocol (BI tools, psql, JDBC)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    add_options(p, ServeConfig, skip=("store",))
    p.add_argument(
        "--add-user",
        metavar="NAME",
        default=None,
        help="add or change a user in the users file and exit; the password is "
        "read from --password-env's variable or asked for",
    )
    p.add_argument(
        "--role",
        choices=("reader", "writer"),
        default="reader",
        help="role for --add-user (default: reader, which can only read)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from saedb.options import build
    from saedb.server import ServeConfig, auth, serve

    if not Path(args.store).exists():
        raise ConfigError(f"no store at {args.store} (create it with: saedb init {args.store})")
    cfg = build(ServeConfig, args, store=args.store)
    if args.add_user:
        path = Path(cfg.users_file) if cfg.users_file else auth.users_path(Path(cfg.store))
        password = os.environ.get(cfg.password_env) or getpass.getpass(
            f"password for {args.add_user}: "
        )
        auth.save_user(path, args.add_user, password, args.role)
        print(f"{path}: user {args.add_user} ({args.role})")
        return 0
    try:
        asyncio.run(serve(cfg))
    except KeyboardInterrupt:
        pass
    return 0
