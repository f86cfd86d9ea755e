"""download_mnist against a local HTTP server on 127.0.0.1: verify, mismatch, cut connections, Range ignored."""
from __future__ import annotations

import hashlib
import http.client
import http.server
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from convrnn.data.download import RemoteFile, download_mnist
from convrnn.errors import DataError

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=200_003, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class FixtureHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range support; per-file misbehaviour from ``server.modes``.

    modes: "norange" answers every request with 200 and the whole file; "cut" sends the headers of
    the full answer, half of its body, then closes the connection (once).
    """

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        server = self.server
        name = self.path.rsplit("/", 1)[-1]
        server.requests.append((name, self.headers.get("Range")))
        if name not in server.files:
            self.send_error(404)
            return
        body, mode = server.files[name], server.modes.get(name)
        start = 0
        asked = self.headers.get("Range")
        if asked and mode != "norange":
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if mode == "cut" and name not in server.already_cut:
            server.already_cut.add(name)
            self.wfile.write(chunk[: len(chunk) // 2])
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FixtureHandler)
    httpd.files, httpd.modes, httpd.requests, httpd.already_cut = {}, {}, [], set()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/mnist/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def fetch(server, tmp_path, files, **kwargs):
    return download_mnist(tmp_path, base_url=server.base_url, files=files, timeout=5, retry_wait=0, **kwargs)


def test_good_file_is_downloaded_verified_and_reported(server, tmp_path):
    server.files["a.gz"] = PAYLOAD
    seen = []
    paths = fetch(server, tmp_path, [RemoteFile("a.gz", MD5)], progress=lambda *a: seen.append(a))
    assert paths == [tmp_path / "a.gz"]
    assert paths[0].read_bytes() == PAYLOAD
    assert not (tmp_path / "a.gz.part").exists()
    assert seen[-1] == ("a.gz", len(PAYLOAD), len(PAYLOAD))
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and done[0] == 0


def test_checksum_mismatch_raises_and_leaves_no_file(server, tmp_path):
    server.files["a.gz"] = PAYLOAD
    wrong = "0" * 32
    with pytest.raises(DataError, match=f"a.gz: expected MD5 {wrong}, downloaded file has MD5 {MD5}"):
        fetch(server, tmp_path, [RemoteFile("a.gz", wrong)])
    assert list(tmp_path.iterdir()) == []


def test_cut_connection_is_resumed_with_a_range_request(server, tmp_path):
    server.files["a.gz"] = PAYLOAD
    server.modes["a.gz"] = "cut"
    fetch(server, tmp_path, [RemoteFile("a.gz", MD5)])
    assert (tmp_path / "a.gz").read_bytes() == PAYLOAD
    assert server.requests == [("a.gz", None), ("a.gz", f"bytes={len(PAYLOAD) // 2}-")]


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"),
                                   http.client.IncompleteRead(b"", 10)])
def test_reading_error_mid_file_is_retried_from_the_part_size(server, tmp_path, monkeypatch, error):
    """The client side of a reset: the first response raises after 70,000 bytes."""
    server.files["a.gz"] = PAYLOAD
    real_urlopen = urllib.request.urlopen
    calls = []

    def flaky_urlopen(*args, **kwargs):
        response = real_urlopen(*args, **kwargs)
        calls.append(response)
        if len(calls) == 1:
            real_read, given = response.read, [0]

            def read(amt=None):
                if given[0] >= 70_000:
                    raise error
                data = real_read(min(amt, 70_000 - given[0]))
                given[0] += len(data)
                return data

            response.read = read
        return response

    monkeypatch.setattr(urllib.request, "urlopen", flaky_urlopen)
    fetch(server, tmp_path, [RemoteFile("a.gz", MD5)])
    assert (tmp_path / "a.gz").read_bytes() == PAYLOAD
    assert server.requests == [("a.gz", None), ("a.gz", "bytes=70000-")]


def test_a_host_that_does_not_resolve_is_not_retried(server, tmp_path, monkeypatch):
    import socket
    calls = []

    def no_dns(*args, **kwargs):
        calls.append(1)
        raise urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    with pytest.raises(DataError, match=r"a.gz: .*cannot resolve its host \(Name or service not known\): no network"):
        fetch(server, tmp_path, [RemoteFile("a.gz", MD5)], retries=3)
    assert len(calls) == 1


def test_persistent_failure_gives_up_after_the_retries(server, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="a.gz: .*ConnectionRefusedError.*gave up after 2 retries"):
        fetch(server, tmp_path, [RemoteFile("a.gz", MD5)], retries=2)
    assert not (tmp_path / "a.gz").exists()


def test_existing_part_file_is_resumed(server, tmp_path):
    server.files["a.gz"] = PAYLOAD
    (tmp_path / "a.gz.part").write_bytes(PAYLOAD[:1000])
    fetch(server, tmp_path, [RemoteFile("a.gz", MD5)])
    assert (tmp_path / "a.gz").read_bytes() == PAYLOAD
    assert server.requests == [("a.gz", "bytes=1000-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["a.gz"] = PAYLOAD
    server.modes["a.gz"] = "norange"
    (tmp_path / "a.gz.part").write_bytes(b"x" * 5000)  # wrong bytes: appending to them would corrupt the file
    fetch(server, tmp_path, [RemoteFile("a.gz", MD5)])
    assert (tmp_path / "a.gz").read_bytes() == PAYLOAD
    assert server.requests == [("a.gz", "bytes=5000-")]


def test_stale_part_with_wrong_bytes_is_redownloaded_from_scratch(server, tmp_path):
    server.files["a.gz"] = PAYLOAD
    (tmp_path / "a.gz.part").write_bytes(b"x" * 5000)  # resumable server: the tail fits, the head is wrong
    fetch(server, tmp_path, [RemoteFile("a.gz", MD5)])
    assert (tmp_path / "a.gz").read_bytes() == PAYLOAD
    assert server.requests == [("a.gz", "bytes=5000-"), ("a.gz", None)]


def test_verified_files_are_skipped_and_bad_ones_replaced(server, tmp_path):
    other = PAYLOAD[::-1]
    server.files.update({"a.gz": PAYLOAD, "b.gz": other})
    (tmp_path / "a.gz").write_bytes(PAYLOAD)
    (tmp_path / "b.gz").write_bytes(b"stale")
    files = [RemoteFile("a.gz", MD5), RemoteFile("b.gz", hashlib.md5(other).hexdigest())]
    paths = fetch(server, tmp_path, files)
    assert [p.name for p in paths] == ["a.gz", "b.gz"]
    assert (tmp_path / "b.gz").read_bytes() == other
    assert [name for name, _ in server.requests] == ["b.gz"]


def test_unreachable_file_names_every_mirror(server, tmp_path):
    second = server.base_url.replace("/mnist/", "/other/")
    with pytest.raises(DataError, match="missing.gz: .*404.*404"):
        download_mnist(tmp_path, base_url=[server.base_url, second], files=[RemoteFile("missing.gz", MD5)],
                       timeout=5, retry_wait=0)
    assert [name for name, _ in server.requests] == ["missing.gz", "missing.gz"]
    assert not (tmp_path / "missing.gz").exists()


def test_default_table_holds_the_four_official_checksums():
    from convrnn.data.download import MNIST_FILES

    assert {f.name: f.md5 for f in MNIST_FILES} == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
