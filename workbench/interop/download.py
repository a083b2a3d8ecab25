"""Downloads with a cache, a progress bar and an integrity check; the catalogue of released files."""

from __future__ import annotations

import hashlib
import os
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
    sha256: str | None = None  # full hash, or a prefix (timm's files carry one in their names)
    page: str = ""

    @property
    def downloadable(self) -> bool:
        """Only a direct link with a recorded hash is downloaded: every download is checked."""
        return self.url is not None and self.sha256 is not None


# GPViT's release publishes no hashes and none has been recorded here yet: until one is (the sha256
# of each file, from a machine with network access), these entries name the file to fetch by hand.
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


def download(
    url: str, sha256: str | None = None, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The file at ``url``, from the cache when present (and intact), else downloaded into it.

    ``sha256`` may be the full hex digest or a prefix; a mismatch deletes the download and raises.
    """
    folder = Path(cache_dir) if cache_dir else workbench_cache() / "downloads"
    name = Path(urlparse(url).path).name or "download"
    target = folder / name
    if target.is_file() and (sha256 is None or _sha256(target).startswith(sha256)):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkstemp(dir=folder, prefix=f".{name}.")[1])
    try:
        try:
            with urllib.request.urlopen(url, timeout=30) as response, staging.open("wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ValueError(
                f"cannot download {url}: {reason}. Without network access, fetch it elsewhere and pass "
                f"the local path (or place it at {target})."
            ) from error
        actual = _sha256(staging)
        if sha256 is not None and not actual.startswith(sha256):
            raise ValueError(f"{url}: sha256 is {actual}, expected {sha256}...; the download was discarded")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


def resolve_source(source: str | Path) -> Path:
    """A local path, a URL (downloaded) or a catalogue name (downloaded, hash-checked)."""
    text = str(source)
    if text in CATALOGUE:
        release = CATALOGUE[text]
        if not release.downloadable:
            why = (
                "no direct download link" if release.url is None else "no recorded sha256 to check it against"
            )
            raise ValueError(
                f"{text} has {why}; get it from {release.url or release.page} and pass the file's path "
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
