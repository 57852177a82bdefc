"""Each promise of artifacts/download.py, against a real local HTTP(S) server.

https only unless opted in; redirects checked hop by hop (an https URL redirecting to
http is refused before the http request is sent); bounded retries on 5xx and broken
transfers, none on 4xx; a size cap by Content-Length and by bytes actually read;
Content-Length lies; timeouts; sha256 pinning; a temp file renamed atomically, nothing
left behind on failure. HTTPS uses a throwaway CA from trustme.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from ci_compress.errors import ArtifactError, ConfigError, InfraError
from ci_compress.loading.download import download
from tests.helpers.local_http import LocalServer, start

BODY = bytes(range(256)) * 400  # 100 KiB
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(scope="module")
def http() -> Iterator[LocalServer]:
    s = start()
    s.files["m.bin"] = BODY
    yield s
    s.stop()


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    s = start(tls_dir=tmp_path_factory.mktemp("tls"))
    s.files["m.bin"] = BODY
    yield s
    s.stop()


@pytest.fixture
def trust(https: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https.ca_path))


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def fetch(url: str, dest: Path, **kw: object) -> Path:
    opts: dict[str, object] = {"sha256": SHA, "dest_dir": dest, "backoff": 0.01}
    opts.update(kw)
    return download(url, **opts)  # type: ignore[arg-type]


def test_plain_http_is_refused_without_opt_in(http: LocalServer, tmp_path: Path) -> None:
    before = sum(http.hits.values())
    with pytest.raises(ConfigError, match="refusing plain http"):
        fetch(http.url("/files/m.bin"), tmp_path)
    assert sum(http.hits.values()) == before  # not even one request


def test_https_download_is_verified_renamed_and_cached(
    https: LocalServer, tmp_path: Path, trust: None
) -> None:
    path = fetch(https.url("/files/m.bin"), tmp_path)
    assert path.read_bytes() == BODY
    assert leftovers(tmp_path) == [path.name]  # no .part file left
    hits = https.hits["/files/m.bin"]
    assert fetch(https.url("/files/m.bin"), tmp_path) == path
    assert https.hits["/files/m.bin"] == hits  # served from the verified cache


def test_untrusted_certificate_fails_as_infrastructure(https: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="SSLError"):
        fetch(https.url("/files/m.bin"), tmp_path, retries=0)


def test_https_redirect_to_http_is_refused_before_the_http_request(
    https: LocalServer, http: LocalServer, tmp_path: Path, trust: None
) -> None:
    target = http.url("/files/m.bin?via=redirect")
    with pytest.raises(ArtifactError, match="redirected to plain http"):
        fetch(https.url("/redirect/" + quote(target, safe="")), tmp_path)
    assert http.hits["/files/m.bin?via=redirect"] == 0
    assert leftovers(tmp_path) == []


def test_http_redirect_is_followed_when_http_is_allowed(http: LocalServer, tmp_path: Path) -> None:
    url = http.url("/redirect/" + quote("/files/m.bin", safe=""))
    assert fetch(url, tmp_path, allow_http=True).read_bytes() == BODY


def test_redirect_loop_stops(http: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="redirected more than 5 times"):
        fetch(http.url("/loop"), tmp_path, allow_http=True)


def test_sha256_mismatch_leaves_nothing_behind(http: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"model\.sha256 expects 0000"):
        fetch(http.url("/files/m.bin"), tmp_path, sha256="0" * 64, allow_http=True)
    assert leftovers(tmp_path) == []


def test_5xx_is_retried_then_succeeds(http: LocalServer, tmp_path: Path) -> None:
    route = "/flaky/2/m.bin"
    assert fetch(http.url(route), tmp_path, allow_http=True, retries=2).read_bytes() == BODY
    assert http.hits[route] == 3


def test_retries_are_bounded(http: LocalServer, tmp_path: Path) -> None:
    route = "/status/503/m.bin"
    with pytest.raises(InfraError, match="HTTP 503"):
        fetch(http.url(route), tmp_path, allow_http=True, retries=2)
    assert http.hits[route] == 3


def test_4xx_is_not_retried(http: LocalServer, tmp_path: Path) -> None:
    route = "/status/403/m.bin"
    with pytest.raises(ArtifactError, match="HTTP 403"):
        fetch(http.url(route), tmp_path, allow_http=True, retries=2)
    assert http.hits[route] == 1


def test_size_cap_by_content_length(http: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"over model\.max_download_bytes"):
        fetch(http.url("/files/m.bin"), tmp_path, allow_http=True, max_bytes=1000)
    assert leftovers(tmp_path) == []


def test_size_cap_without_content_length(http: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"larger than model\.max_download_bytes"):
        fetch(http.url("/nolength/m.bin"), tmp_path, allow_http=True, max_bytes=1000)
    assert leftovers(tmp_path) == []


def test_no_content_length_within_the_cap_works(http: LocalServer, tmp_path: Path) -> None:
    assert fetch(http.url("/nolength/m.bin"), tmp_path, allow_http=True).read_bytes() == BODY


def test_content_length_too_small_is_caught_by_the_sha256(
    http: LocalServer, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match="sha256"):
        fetch(http.url("/shortlength/m.bin"), tmp_path, allow_http=True)
    assert leftovers(tmp_path) == []


def test_content_length_too_large_is_a_broken_transfer_and_retried(
    http: LocalServer, tmp_path: Path
) -> None:
    route = "/longlength/m.bin"
    with pytest.raises(InfraError, match="broke off"):
        fetch(http.url(route), tmp_path, allow_http=True, retries=1)
    assert http.hits[route] == 2
    assert leftovers(tmp_path) == []


def test_timeout_is_enforced(http: LocalServer, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(InfraError, match="Timeout"):
        fetch(http.url("/slow/m.bin"), tmp_path, allow_http=True, timeout=0.5, retries=0)
    assert time.monotonic() - t0 < 2.5


def test_credentials_in_the_url_are_never_in_messages(http: LocalServer, tmp_path: Path) -> None:
    url = http.url("/files/m.bin").replace("http://", "http://bob:hunter2-pw@")
    with pytest.raises(ArtifactError) as err:
        fetch(url, tmp_path, sha256="0" * 64, allow_http=True)
    assert "hunter2-pw" not in str(err.value) and "***@127.0.0.1" in str(err.value)
