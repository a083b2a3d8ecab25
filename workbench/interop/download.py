"""Downloads with a cache, a progress bar and an integrity check; the catalogue of released files.

Every download is checked: against the published sha256 where the release gives one, else against the
hash of its first download (trust on first use), printed then and recorded beside the cached file as
``<file>.sha256`` (``sha256sum`` format). A cached file, or a later download, that differs from the
recorded hash is refused. Files are fetched over https only, since a first download is what later uses
are held to; plain http is accepted from loopback hosts alone (127.0.0.0/8, ::1, localhost: a test's
local server), where nothing crosses a network.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from workbench.cache import cache_dir as workbench_cache


@dataclass(frozen=True)
class Release:
    """A released checkpoint: where it is, which model it fits and in which layout."""

    url: str | None  # None: no direct link (e.g. Google Drive); ``page`` says where to get it
    model: str
    format: str
    sha256: str | None = None  # full hash or a prefix (timm's files carry one); None: trust on first use
    page: str = ""

    @property
    def downloadable(self) -> bool:
        """A direct link: downloaded and checked (against ``sha256``, or its first download's hash)."""
        return self.url is not None


# GPViT's release publishes no hashes: its files are checked against their first download's hash.
_GPVIT = "https://github.com/ChenhongyiYang/GPViT/releases/download/v0.0.1"
_GPVIT_PAGE = "https://github.com/ChenhongyiYang/GPViT/releases/tag/v0.0.1"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx"
CATALOGUE: dict[str, Release] = {
    **{
        f"gpvit_l{n}_in1k": Release(
            f"{_GPVIT}/gpvit_l{n}_in1k_300e.pth", f"gpvit_l{n}", "gpvit", page=_GPVIT_PAGE
        )
        for n in range(1, 5)
    },
    **{
        f"gpvit_l{n}_{head}_ade20k": Release(
            f"{_GPVIT}/gpvit_l{n}_{head}.pth", f"gpvit_l{n}_{head}", "gpvit", page=_GPVIT_PAGE
        )
        for n in range(1, 5)
        for head in ("upernet", "segformer")
    },
    "jx_vit_large_p16_384": Release(
        f"{_TIMM}/jx_vit_large_p16_384-b3be5167.pth", "setr_pup_vit_large", "timm", "b3be5167"
    ),
    "jx_vit_base_p16_384": Release(
        f"{_TIMM}/jx_vit_base_p16_384-83fb41ba.pth", "setr_pup_vit_base", "timm", "83fb41ba"
    ),
    "deit_base_distilled_patch16_384": Release(
        "https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_384-d0272ac0.pth",
        "setr_pup_deit_base",
        "deit",
        "d0272ac0",
    ),
    **{
        f"setr_{name}": Release(
            None,
            f"setr_{name.split('_')[0]}_vit_large",
            "setr_official",
            page="https://github.com/fudan-zvg/SETR (README, Google Drive)",
        )
        for name in (
            "naive_cityscapes",
            "pup_cityscapes",
            "mla_cityscapes",
            "naive_ade20k",
            "pup_ade20k",
            "mla_ade20k",
        )
    },
    **{
        f"hlg_{size}_in1k": Release(
            None, f"hlg_{size}", "hlg", page="https://github.com/fudan-zvg/SETR (README, HLG ImageNet table)"
        )
        for size in ("tiny", "small", "medium", "large")
    },
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:  # a host name
        return False


def _check_transport(url: str) -> None:
    """https, or plain http to this machine only (see the module docstring)."""
    parsed = urlparse(url)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and _is_loopback(parsed.hostname)):
        raise ValueError(
            f"refusing to download {url}: only https:// addresses are fetched (plain http only from this "
            f"machine: localhost, 127.0.0.1, ::1)"
        )


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an address ``_check_transport`` accepts, before connecting to it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_transport(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade)


def _recorded(record: Path) -> str | None:
    """The sha256 recorded at a file's first download, or None if there is no record."""
    if not record.is_file():
        return None
    digest = record.read_text().split(maxsplit=1)[:1]
    if not digest or not re.fullmatch(r"[0-9a-f]{64}", digest[0]):
        raise ValueError(
            f"{record} is not a sha256 record; delete it and the file beside it to download again"
        )
    return digest[0]


def _record(record: Path, digest: str, file_name: str) -> None:
    staging = record.with_name(f".{record.name}.tmp")
    staging.write_text(f"{digest}  {file_name}\n")
    os.replace(staging, record)  # a reader never sees half a record
    print(
        f"{file_name}: sha256 {digest} (no published hash: recorded in {record}, checked on every later use)",
        file=sys.stderr,
    )


def download(
    url: str, sha256: str | None = None, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The file at ``url``, from the cache when present (and intact), else downloaded into it.

    ``sha256`` may be the full hex digest or a prefix; a mismatch deletes the download and raises.
    Without it, the hash recorded at the first download is the one checked (see the module docstring).
    """
    _check_transport(url)
    folder = Path(cache_dir) if cache_dir else workbench_cache() / "downloads"
    name = Path(urlparse(url).path).name or "download"
    target, record = folder / name, folder / f"{name}.sha256"
    expected = sha256 or _recorded(record)
    if target.is_file():
        found = _sha256(target)
        if expected is None:  # cached before hashes were recorded: this copy is the first use
            _record(record, found, name)
            return target
        if found.startswith(expected):
            return target
        if sha256 is None:
            raise ValueError(
                f"{target} changed since its first download: sha256 is {found}, expected {expected} "
                f"(recorded in {record.name}); delete the file to download it again"
            )
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkstemp(dir=folder, prefix=f".{name}.")[1])
    try:
        _fetch(url, staging, target, progress)
        actual = _sha256(staging)
        if expected is not None and not actual.startswith(expected):
            shown = expected + ("..." if len(expected) < 64 else "")
            if sha256 is None:
                shown += f" (recorded at its first download in {record}: delete it to accept the new file)"
            raise ValueError(f"{url}: sha256 is {actual}, expected {shown}; the download was discarded")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    if expected is None:
        _record(record, actual, name)
    return target


def _fetch(url: str, staging: Path, target: Path, progress: bool) -> None:
    """Stream ``url`` into ``staging`` with a progress bar; failures say how to do without a network."""
    try:
        with _OPENER.open(url, timeout=30) as response, staging.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ValueError(
            f"cannot download {url}: {reason}. Without network access, fetch it elsewhere and pass "
            f"the local path (or place it at {target})."
        ) from error


def resolve_source(source: str | Path) -> Path:
    """A local path, a URL or a catalogue name (both downloaded and hash-checked)."""
    text = str(source)
    if text in CATALOGUE:
        release = CATALOGUE[text]
        if release.url is None:
            raise ValueError(
                f"{text} has no direct download link; get it from {release.page} and pass the file's path "
                f"(load_pretrained(model, PATH) or workbench convert PATH OUT --model {release.model})"
            )
        return download(release.url, release.sha256)
    if text.startswith(("http://", "https://")):
        return download(text)
    path = Path(text)
    if not path.exists():
        raise ValueError(
            f"{text} is neither a file, a URL nor a catalogue name ({', '.join(sorted(CATALOGUE)[:6])}, ...)"
        )
    return path
