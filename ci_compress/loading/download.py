"""Downloading a model file: https only, pinned by sha256, bounded in size and time.

The body streams to a temporary file beside the destination, hashed as it arrives;
only a complete file whose sha256 matches is renamed into place (atomic), so a failed
or tampered download leaves nothing behind that a later run could pick up.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from ci_compress.errors import ArtifactError, ConfigError, InfraError
from ci_compress.files import atomic_write_with, file_sha256
from ci_compress.redaction import redact_url

__all__ = ["download", "redact_url"]

CHUNK = 1 << 20


def download(
    url: str,
    *,
    sha256: str,
    dest_dir: Path,
    allow_http: bool = False,
    max_bytes: int = 2 * 1024**3,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
) -> Path:
    """Fetch ``url`` into ``dest_dir`` and return the verified local path."""

    shown = redact_url(url)
    scheme = urlsplit(url).scheme
    if scheme not in ("https", "http"):
        raise ConfigError(
            f"unsupported URL scheme {scheme!r} in {shown}",
            path="model.url",
            hint="use an https:// URL",
        )
    if scheme == "http" and not allow_http:
        raise ConfigError(
            f"refusing plain http download {shown}",
            path="model.url",
            hint="use https, or set model.allow_http: true on a network you trust",
        )
    if not sha256:
        raise ConfigError("a url needs sha256", path="model.sha256")
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urlsplit(url).path).name or "model"
    dest = dest_dir / f"{sha256[:16]}-{name}"
    if dest.exists() and file_sha256(dest) == sha256.lower():
        return dest
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            return _fetch(url, shown, dest, sha256.lower(), max_bytes, timeout, allow_http)
        except InfraError as e:
            last = e
    assert last is not None
    raise last


MAX_REDIRECTS = 5


def _fetch(
    url: str, shown: str, dest: Path, sha256: str, max_bytes: int, timeout: float, allow_http: bool
) -> Path:
    """One attempt. InfraError means "try again"; ArtifactError means "this will not work".

    Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, and each target is
    checked *before* it is requested: an https URL that redirects to plain http is
    refused without sending the http request. ``timeout`` bounds each socket wait and,
    times the retry budget, the whole transfer (a server dripping one byte at a time
    cannot hold the job). A body shorter than its Content-Length is a broken transfer
    (retried); a longer one is cut at the announced length and then fails the sha256.
    """
    from urllib.parse import urljoin

    import requests as rq

    deadline = time.monotonic() + max(timeout * 4, 60.0)
    current = url
    try:
        with rq.Session() as session:
            for _hop in range(MAX_REDIRECTS + 1):
                r = session.get(current, stream=True, timeout=timeout, allow_redirects=False)
                if not r.is_redirect:
                    break
                target = urljoin(current, r.headers.get("Location", ""))
                r.close()
                scheme = urlsplit(target).scheme
                if scheme not in ("http", "https"):
                    raise ArtifactError(
                        f"download of {shown} was redirected to an unsupported URL scheme {scheme!r}; refused"
                    )
                if scheme == "http" and not allow_http:
                    raise ArtifactError(
                        f"download of {shown} was redirected to plain http ({redact_url(target)}); refused",
                        hint="fix model.url to the final https location, or set model.allow_http: true on a network you trust",
                    )
                current = target
            else:
                raise ArtifactError(
                    f"download of {shown} was redirected more than {MAX_REDIRECTS} times; refused",
                    hint="fix model.url to the final location",
                )
            with r:
                return _save(r, shown, dest, sha256, max_bytes, deadline)
    except (rq.ConnectionError, rq.Timeout) as e:
        raise InfraError(
            f"cannot download {shown}: {type(e).__name__}", hint="check the URL and the network"
        ) from None
    except rq.exceptions.ChunkedEncodingError:
        raise InfraError(
            f"download of {shown} broke off before the end (fewer bytes than announced)",
            hint="the server or the network dropped the connection; retry later",
        ) from None
    except rq.RequestException as e:
        raise ArtifactError(f"cannot download {shown}: {type(e).__name__}") from None


def _save(r: object, shown: str, dest: Path, sha256: str, max_bytes: int, deadline: float) -> Path:
    import requests as rq

    assert isinstance(r, rq.Response)
    if r.status_code in (408, 429) or r.status_code >= 500:
        raise InfraError(
            f"download of {shown} failed: HTTP {r.status_code}",
            hint="the server is busy or failing; retry later",
        )
    if r.status_code != 200:
        raise ArtifactError(
            f"download of {shown} failed: HTTP {r.status_code}", hint="check model.url"
        )
    announced = r.headers.get("Content-Length")
    if announced and announced.isdigit() and int(announced) > max_bytes:
        raise ArtifactError(
            f"{shown} is {announced} bytes, over model.max_download_bytes ({max_bytes}); refused",
            hint="raise model.max_download_bytes if the file is expected to be this large",
        )
    h = hashlib.sha256()
    got = 0

    def write(f: BinaryIO) -> None:
        nonlocal got
        for chunk in r.iter_content(CHUNK):
            got += len(chunk)
            if got > max_bytes:
                raise ArtifactError(
                    f"{shown} is larger than model.max_download_bytes ({max_bytes}); stopped",
                    hint="raise model.max_download_bytes if the file is expected to be this large",
                )
            if time.monotonic() > deadline:
                raise InfraError(
                    f"download of {shown} is too slow ({got} bytes so far); stopped",
                    hint="the server is too slow; retry later",
                )
            h.update(chunk)
            f.write(chunk)
        if announced and announced.isdigit() and got < int(announced):
            raise InfraError(
                f"download of {shown} broke off after {got} of {announced} bytes",
                hint="the server or the network dropped the connection; retry later",
            )
        if h.hexdigest() != sha256:
            raise ArtifactError(
                f"sha256 of {shown} is {h.hexdigest()}, model.sha256 expects {sha256}",
                hint="the file changed or was tampered with; re-pin only a file you trust",
            )

    atomic_write_with(dest, write)
    return dest
