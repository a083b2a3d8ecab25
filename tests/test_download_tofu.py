"""Released files without a published hash: trusted on first download, held to that hash after."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from workbench.interop import CATALOGUE, Release, download, load_pretrained
from workbench.interop.release_file import save_release_file

from .test_interop import _Server
from .tiny import tiny_gpvit


def test_a_release_without_a_published_hash_is_recorded_then_checked(tmp_path, monkeypatch, capsys):
    served = tmp_path / "served"
    save_release_file(tiny_gpvit(), "gpvit", served / "gpvit_tiny.pth")
    digest = hashlib.sha256((served / "gpvit_tiny.pth").read_bytes()).hexdigest()
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "downloads" / "gpvit_tiny.pth"
    record = cached.with_name("gpvit_tiny.pth.sha256")
    server = _Server(served)
    try:
        monkeypatch.setitem(
            CATALOGUE, "gpvit_tiny_test", Release(f"{server.url}/gpvit_tiny.pth", "gpvit_l1", "gpvit")
        )
        assert load_pretrained(tiny_gpvit(), "gpvit_tiny_test").clean
        assert (
            f"gpvit_tiny.pth: sha256 {digest} (no published hash: recorded in {record}"
            in capsys.readouterr().err
        )
        assert record.read_text() == f"{digest}  gpvit_tiny.pth\n"
        assert load_pretrained(tiny_gpvit(), "gpvit_tiny_test").clean and server.requests == 1

        cached.write_bytes(cached.read_bytes() + b"\0")
        changed = hashlib.sha256(cached.read_bytes()).hexdigest()
        with pytest.raises(
            ValueError,
            match=rf"tiny\.pth changed since its first download: sha256 is {changed}, expected {digest} \(",
        ):
            load_pretrained(tiny_gpvit(), "gpvit_tiny_test")

        cached.unlink()  # downloaded again, the file must still be the first one
        (served / "gpvit_tiny.pth").write_bytes(b"another file")
        with pytest.raises(
            ValueError,
            match=rf"sha256 is [0-9a-f]{{64}}, expected {digest} \(recorded at its first download in ",
        ):
            load_pretrained(tiny_gpvit(), "gpvit_tiny_test")
        assert not cached.exists() and server.requests == 2
    finally:
        server.close()


def test_the_released_gpvit_files_are_downloadable_over_https():
    for n in range(1, 5):
        release = CATALOGUE[f"gpvit_l{n}_in1k"]
        assert release.downloadable and release.sha256 is None and release.url.startswith("https://")


def test_plain_http_is_refused_unless_from_this_machine(tmp_path):
    with pytest.raises(ValueError, match=r"^refusing to download http://example\.com/x\.pth: only https://"):
        download("http://example.com/x.pth", cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"^cannot download http://localhost:9/x\.pth: "):
        download("http://localhost:9/x.pth", cache_dir=tmp_path, progress=False)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://example.com/x.pth")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ValueError, match=r"^refusing to download http://example\.com/x\.pth"):
            download(f"http://127.0.0.1:{httpd.server_address[1]}/x.pth", cache_dir=tmp_path, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not list(tmp_path.iterdir())  # nothing half-downloaded left behind
