"""A throwaway PostgreSQL server on 127.0.0.1 (tests and benchmarks).

``initdb`` with trust authentication into a temporary folder, ``pg_ctl start`` listening
on 127.0.0.1 only (fsync off: the data is thrown away), one database, and ``pg_ctl stop``
plus removal at the end. As root the server runs as the ``postgres`` system user
(PostgreSQL refuses root). Needs Debian's ``postgresql`` (``.ci/run`` installs it) and the
``psycopg2`` driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def pg_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL's server binaries, if any."""
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists():
            return root
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_server(bin_dir: Path, database: str = "tune") -> Iterator[str]:
    """Start a server; yields a SQLAlchemy URL of ``database``; stops and removes it."""
    # Not under pytest's tmp folders: those are 0700 root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="ci-compress-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        port = _free_port()
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "server.log"),
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            subprocess.run(
                [
                    *as_user,
                    str(bin_dir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    database,
                ],
                check=True,
                capture_output=True,
            )
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=120,
                check=False,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
