"""What the app exposes: the load box loads only from the folders the server was started with (the same
one-line refusal for a path that exists and one that does not), loading is off unless folders are
given (on 127.0.0.1 the checkpoint's folder and the cache by default), a login from a file or the
environment, an upload size limit, and a one-line warning when listening beyond 127.0.0.1."""

from __future__ import annotations

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError
from PIL import Image

import apps.serve
from apps.handlers import Workbench
from apps.layout import build_app
from apps.serve import load_folders, main, read_auth, serve
from apps.settings import Settings
from apps.store import LOADING_OFF, REFUSED
from workbench.cache import cache_dir
from workbench.data.demo import render_scene

from .tiny import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``allowed/default``, ``allowed/other`` and ``outside/run``: three tiny runs."""
    root = tmp_path_factory.mktemp("security")
    for name in ("allowed/default", "allowed/other", "outside/run"):
        tiny_checkpoint(root / name)
    return root


def test_the_load_box_refuses_paths_outside_its_folders_alike_whether_they_exist_or_not(folders):
    allowed = folders / "allowed"
    (allowed / "link").symlink_to(folders / "outside" / "run")  # inside by name, outside once resolved
    workbench = Workbench(Settings(precision="fp32", allow_load=(str(allowed),)), str(allowed / "default"))
    assert workbench.models.get(str(allowed / "other")).predictor.num_classes > 0
    for path in (
        folders / "outside" / "run",  # exists
        folders / "outside" / "absent",  # does not
        allowed / ".." / "outside" / "run",
        allowed / "link",
        "/etc/passwd",
        "/no/such/path",
    ):
        with pytest.raises(ValueError) as refused:
            workbench.models.get(str(path))
        assert str(refused.value) == REFUSED, path
    handlers = {function.name: function.fn for function in build_app(workbench).fns.values()}
    with pytest.raises(gr.Error) as shown:  # what the page shows
        handlers["on_load"](str(folders / "outside" / "run"), "", None, "")
    assert shown.value.message == REFUSED


def test_with_loading_off_the_load_box_says_in_one_line_how_to_turn_it_on(folders):
    workbench = Workbench(Settings(precision="fp32"), str(folders / "allowed" / "default"))
    for path in (folders / "allowed" / "other", folders / "nowhere"):
        with pytest.raises(ValueError) as refused:
            workbench.models.get(str(path))
        assert str(refused.value) == LOADING_OFF and "--allow-load DIR" in LOADING_OFF
    assert "\n" not in LOADING_OFF + REFUSED


def test_loading_is_on_by_default_only_on_127_0_0_1(folders):
    run = folders / "allowed" / "default"
    assert load_folders("127.0.0.1", run, None) == (str(folders / "allowed"), str(cache_dir().resolve()))
    assert load_folders("0.0.0.0", run, None) == ()
    assert load_folders("127.0.0.1", run, []) == ()  # --allow-load with no folder: off
    assert load_folders("0.0.0.0", run, [str(folders / "outside")]) == (str(folders / "outside"),)


def test_a_login_comes_from_a_file_or_the_environment_never_the_command_line(folders, tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_AUTH", raising=False)
    assert read_auth() is None
    monkeypatch.setenv("WORKBENCH_AUTH", "ada:s3cret:with:colons")
    assert read_auth() == [("ada", "s3cret:with:colons")]
    users = tmp_path / "users"
    users.write_text("# who may log in\nada:one\n\nbob:two\n")
    assert read_auth(users) == [("ada", "one"), ("bob", "two")]  # the file wins over the environment
    users.write_text("ada\n")
    with pytest.raises(ValueError, match="expected user:password lines"):
        read_auth(users)
    for option in ("--auth", "--password"):  # no such option (nor an abbreviation): ps shows the line
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(folders / "allowed" / "default"), option, "ada:one"])


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_listening_beyond_127_0_0_1_warns_in_one_line_what_it_exposes(folders, host, monkeypatch, capsys):
    """``main`` up to the launch (not bound: tests listen on 127.0.0.1 only)."""
    launched = {}
    monkeypatch.setattr(apps.serve, "launch", lambda app, *args, **kwargs: launched.update(kwargs) or "url")
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    monkeypatch.delenv("WORKBENCH_AUTH", raising=False)
    run = str(folders / "allowed" / "default")
    main(["--checkpoint", run, "--host", host, "--precision", "fp32", "--max-upload-mb", "5"])
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    if host == "127.0.0.1":
        assert warnings == []
    else:
        assert warnings == [
            "warning: listening on 0.0.0.0 exposes the app to the network: loading models from the page "
            "off, NO login (--auth-file or $WORKBENCH_AUTH)"
        ]
    assert launched == {"max_upload_mb": 5, "auth": None}

    monkeypatch.setenv("WORKBENCH_AUTH", "ada:one")
    main(["--checkpoint", run, "--host", host, "--precision", "fp32", "--allow-load", str(folders)])
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert launched == {"max_upload_mb": 64, "auth": [("ada", "one")]}
    if host != "127.0.0.1":
        assert len(warnings) == 1 and f"ON (from {folders})" in warnings[0]
        assert warnings[0].endswith("login required")


def test_a_login_is_required_and_an_over_size_upload_is_refused(folders, tmp_path):
    """Refused by the server itself (a raw upload: 401 without a login, 413 over the limit), and so by
    gradio_client before it sends the file."""
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.fromarray(render_scene(np.random.default_rng(3), 64)[0]).save(small)
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(large)  # incompressible: about 1.5 MB
    assert large.stat().st_size > 2**20
    app, url = serve(
        folders / "allowed" / "default",
        port=0,
        auth=[("ada", "one")],
        max_upload_mb=1,
        precision="fp32",
    )
    try:
        with httpx.Client(base_url=url) as raw:
            assert raw.post("/gradio_api/upload", files={"files": small.read_bytes()}).status_code == 401
            assert raw.post("/login", data={"username": "ada", "password": "two"}).status_code != 200
            assert raw.post("/login", data={"username": "ada", "password": "one"}).status_code == 200
            assert raw.post("/gradio_api/upload", files={"files": small.read_bytes()}).status_code == 200
            refused = raw.post("/gradio_api/upload", files={"files": large.read_bytes()})
            assert refused.status_code == 413 and "1048576 bytes" in refused.text
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False)
        client = Client(url, auth=("ada", "one"), verbose=False)
        labels = client.predict(handle_file(small), api_name="/label_map")["labels"]
        assert np.array(labels).shape == (64, 64)
        with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
            client.predict(handle_file(large), api_name="/label_map")
    finally:
        app.close()
