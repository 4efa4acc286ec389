"""Fetching a released set of the registry (harness/config/released.py): download it (urllib; file:// URLs too) or
find it where a person put it by hand, check its SHA-256 against the registry's, unpack it if it is an archive,
and say which folder to evaluate. Every failure is one line (ReleasedError) that says what to do: where the network
fails, what to download by hand and where to put it.

A registry entry without a SHA-256 was written where the file could not be read (no network): its hash is
unverified, and fetching it is refused unless asked to record one (`--record-hash`), which prints the hash to
commit once the file has been checked against its source.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download

from harness.config.released import ReleasedError, ReleasedSet, load_released

CHUNK = 1 << 20
TIMEOUT_S = 30
UNPACKED = ".ddbench-unpacked"  # in an unpacked folder: the SHA-256 of the archive it came from


@dataclass(frozen=True)
class Fetched:
    entry: ReleasedSet
    download: Path  # the file (or, from Hugging Face, the folder) as downloaded
    sha256: str
    verified: bool  # the SHA-256 is the registry's; False: recorded now, unverified
    set_dir: Path  # the folder to evaluate


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(folder: Path) -> str:
    """A folder's SHA-256: of its files' `sha256sum`-style lines ("<hex>  <relative path>"), sorted by path, so
    that the same files give the same hash wherever the folder is."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".ddbench"))
    lines = "".join(f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _by_hand(entry: ReleasedSet, target: Path) -> str:
    return f"download {entry.url} by hand into {target} and run the same command again"


def _download(entry: ReleasedSet, target: Path) -> None:
    """`entry.url` into `target`, through a partial file that only a complete download replaces."""
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(entry.url, timeout=TIMEOUT_S) as response, open(partial, "wb") as out:
            kind = response.headers.get("Content-Type", "") if hasattr(response, "headers") else ""
            if kind.startswith("text/html") and not entry.file.endswith((".html", ".htm")):
                raise ReleasedError(
                    f"{entry.name}: {entry.url} answered with a web page, not the file: {_by_hand(entry, target)}"
                )
            shutil.copyfileobj(response, out, CHUNK)
    except (urllib.error.URLError, OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise ReleasedError(
            f"{entry.name}: could not download {entry.url} ({reason}): {_by_hand(entry, target)}"
        ) from None
    except ReleasedError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)


def _from_huggingface(entry: ReleasedSet, to: Path) -> Path:
    """The entry's folder of a Hugging Face dataset repository, under `to` (downloaded unless already there)."""
    folder = to / entry.huggingface_folder
    if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
        return folder
    by_hand = (
        f"huggingface-cli download {entry.huggingface_repo} --repo-type dataset --include "
        f"'{entry.huggingface_folder}/*' --local-dir {to}, then run the same command again"
    )
    try:
        snapshot_download(
            entry.huggingface_repo, repo_type="dataset", allow_patterns=[f"{entry.huggingface_folder}/*"], local_dir=to
        )
    except Exception as e:  # noqa: BLE001 (the hub raises many kinds for a network that is not there)
        raise ReleasedError(
            f"{entry.name}: could not download from huggingface.co ({type(e).__name__}): {by_hand}"
        ) from None
    if not folder.is_dir():
        raise ReleasedError(
            f"{entry.name}: huggingface.co holds no {entry.huggingface_folder}/ in {entry.huggingface_repo}"
        )
    return folder


def _archive_kind(path: Path) -> str | None:
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    return None


def _unpack(entry: ReleasedSet, archive: Path, sha: str, kind: str) -> Path:
    """`archive` unpacked beside it (once per SHA-256: a later fetch of the same file reuses the folder)."""
    dest = archive.with_name(archive.name.split(".")[0] or entry.name)
    if (dest / UNPACKED).is_file() and (dest / UNPACKED).read_text().strip() == sha:
        return dest
    scratch = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():  # nothing may land outside the folder
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise ReleasedError(f"{entry.name}: {archive} holds an unsafe path {member!r}: refused")
                z.extractall(scratch)
        else:
            with tarfile.open(archive) as t:
                t.extractall(scratch, filter="data")  # the "data" filter refuses links and paths out of the folder
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        raise ReleasedError(
            f"{entry.name}: could not unpack {archive} ({e}): delete it and download it again"
        ) from None
    except ReleasedError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    (scratch / UNPACKED).write_text(sha + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    scratch.replace(dest)
    return dest


def set_folder(folder: Path) -> Path:
    """The folder that holds the class folders: an archive that wraps its set in one top folder is looked into."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
        else:
            return folder


def fetch(entry: ReleasedSet, to: Path, record_hash: bool = False) -> Fetched:
    """Download (or find) `entry` under `to`, check its SHA-256, unpack it. Raises ReleasedError, one line."""
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    if entry.download == "huggingface":
        download = _from_huggingface(entry, to)
        sha = tree_sha256(download)
    else:
        download = to / entry.file
        if not download.is_file():
            if entry.download == "manual":
                raise ReleasedError(
                    f"{entry.name}: its file needs a browser (Google Drive): {_by_hand(entry, download)}"
                )
            _download(entry, download)
        sha = file_sha256(download)
    if entry.sha256 is None and not record_hash:
        raise ReleasedError(
            f"{entry.name}: the registry records no SHA-256 for it (unverified); {download} has SHA-256 {sha}: check "
            f"it against the source, then commit `sha256: {sha}` to {entry.source}, or pass --record-hash to use it "
            "unverified"
        )
    if entry.sha256 is not None and sha != entry.sha256:
        raise ReleasedError(
            f"{entry.name}: {download} has SHA-256 {sha}, the registry records {entry.sha256}: another or a corrupt "
            "file; delete it and download it again"
        )
    if entry.download == "huggingface":
        return Fetched(entry, download, sha, entry.sha256 is not None, set_folder(download))
    kind = _archive_kind(download)
    unpacked = _unpack(entry, download, sha, kind) if kind else None
    if unpacked is None:
        raise ReleasedError(
            f"{entry.name}: {download} is neither a zip nor a tar archive: not a set folder to evaluate"
        )
    return Fetched(entry, download, sha, entry.sha256 is not None, set_folder(unpacked))


def evaluate_line(fetched: Fetched) -> str:
    """The command that evaluates the fetched set (ddbench evaluate, issue 27 item 1)."""
    e = fetched.entry
    line = shlex.join(
        ["ddbench", "evaluate", "--suite", e.suite or "SUITE", "--set", str(fetched.set_dir), "--name", e.name]
    )
    if e.reported is not None:
        line += f" --reported {e.reported.accuracy:g}"
    return line


def fetch_set(args) -> int:
    """The fetch-set verb on its parsed flags (harness/flags.py `fetch_set_parser`): the registry entry, fetched and
    checked, and the `ddbench evaluate` line printed; a failure raises ReleasedError (one line). Imports neither torch
    nor Ray: benchmark.py runs it before the heavy imports, so a wrong NAME is answered at once."""
    entry = load_released(args.name, args.registry)
    fetched = fetch(entry, args.to or Path("released") / entry.name, record_hash=args.record_hash)
    state = "verified against the registry" if fetched.verified else "UNVERIFIED: the registry records none"
    print(f"[fetch-set] {entry.name}: {fetched.download}, SHA-256 {fetched.sha256} ({state})", flush=True)
    if not fetched.verified:
        print(f"[fetch-set] once checked against the source, commit to {entry.source}: sha256: {fetched.sha256}")
    print(f"[fetch-set] set folder: {fetched.set_dir} (class folders by {entry.class_folders}: {entry.class_order})")
    if entry.reported is not None:
        r = entry.reported
        print(f"[fetch-set] its paper reports {r.accuracy:g} % ({r.student}, {r.protocol}; {r.table})")
    print(evaluate_line(fetched), flush=True)
    return 0
