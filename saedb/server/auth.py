"""Password authentication for ``saedb serve``: SCRAM-SHA-256 (RFC 5802 / 7677), as Postgres.

Users live in a JSON file next to the store (``STORE.users.json``, mode 0600) holding, per user,
a role and a salted SCRAM verifier in Postgres's own format
(``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``); a plaintext password is never
written anywhere. ``SAEDB_SERVE_PASSWORD`` (or ``--password-env``) gives the default user's
password for one run instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from saedb.errors import ConfigError

ITERATIONS = 4096
ROLES = ("reader", "writer")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def make_verifier(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """A Postgres-format SCRAM-SHA-256 verifier for ``password``."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


@dataclass
class User:
    name: str
    role: str
    verifier: str


def users_path(store: Path) -> Path:
    return store.with_name(store.name + ".users.json")


def load_users(path: Path) -> dict[str, User]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {n: User(n, u["role"], u["verifier"]) for n, u in raw["users"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a saedb users file ({exc})") from exc


def save_user(path: Path, name: str, password: str, role: str = "reader") -> None:
    """Add or replace one user in the users file (stores only the salted verifier)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role '{role}'. Valid roles are: {', '.join(ROLES)}")
    if not name or not password:
        raise ConfigError("a user needs a non-empty name and password")
    users = load_users(path)
    users[name] = User(name, role, make_verifier(password))
    data = {"users": {n: {"role": u.role, "verifier": u.verifier} for n, u in users.items()}}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


class ScramError(Exception):
    pass


class ScramExchange:
    """The server side of one SCRAM-SHA-256 exchange (no channel binding)."""

    def __init__(self, verifier: str | None) -> None:
        # An unknown user still gets a full exchange with a made-up verifier, so a client
        # cannot tell unknown users from wrong passwords.
        self.known = verifier is not None
        verifier = verifier or make_verifier(secrets.token_hex(16))
        try:
            mech, rest = verifier.split("$", 1)
            iter_salt, keys = rest.split("$")
            iterations, salt = iter_salt.split(":")
            stored, server = keys.split(":")
        except ValueError as exc:
            raise ScramError("malformed SCRAM verifier") from exc
        if mech != "SCRAM-SHA-256":
            raise ScramError("not a SCRAM-SHA-256 verifier")
        self.iterations, self.salt = int(iterations), salt
        self.stored_key, self.server_key = base64.b64decode(stored), base64.b64decode(server)
        self.nonce = ""
        self.client_first_bare = self.server_first = ""

    def first(self, client_first: bytes) -> bytes:
        text = client_first.decode()
        gs2, _, bare = text.partition(",,") if text.startswith(("n,", "y,")) else ("", "", "")
        if not bare:
            raise ScramError("channel binding is not supported; connect without it")
        attrs = dict(a.split("=", 1) for a in bare.split(",") if "=" in a)
        if "r" not in attrs:
            raise ScramError("client-first-message without a nonce")
        self.client_first_bare = bare
        self.nonce = attrs["r"] + _b64(secrets.token_bytes(18))
        self.server_first = f"r={self.nonce},s={self.salt},i={self.iterations}"
        return self.server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        """Check the client's proof; return the server-final message or raise ScramError."""
        text = client_final.decode()
        without_proof, _, proof_part = text.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
        if attrs.get("r") != self.nonce:
            raise ScramError("nonce mismatch")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_sig = hmac.digest(self.stored_key, auth_message, "sha256")
        proof = base64.b64decode(proof_part)
        client_key = bytes(a ^ b for a, b in zip(proof, client_sig, strict=False))
        if not self.known or not hmac.compare_digest(
            hashlib.sha256(client_key).digest(), self.stored_key
        ):
            raise ScramError("password authentication failed")
        server_sig = hmac.digest(self.server_key, auth_message, "sha256")
        return f"v={_b64(server_sig)}".encode()
