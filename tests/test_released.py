"""The registry of released sets (benchmarks/released/) and `ddbench fetch-set` (issue 27, item 4): every committed
entry reads; a set is fetched from a local file:// URL and verified against its SHA-256, a wrong one refused, an
unverified entry refused unless --record-hash; an unreachable URL, a Google Drive file and a bad registry file are
each one line and exit status 2."""

import hashlib
import io
import shlex
import tarfile
import zipfile

import pytest
import yaml

from harness.cli import main
from harness.config.released import RELEASED_DIR, load_released, registry_names
from harness.core.sets import save_images
from harness.runtime.released_sets import tree_sha256


def test_every_committed_entry_reads_and_none_claims_an_unchecked_hash():
    names = registry_names()
    assert {
        "sre2l-in1k-rn18-4k-ipc50",
        "d3hr-imagenet1k-10ipc",
        "minimax-in1k-ipc50",
        "cao2-distilled-datasets",
    } <= set(names)
    for name in names:
        entry = load_released(name)
        assert entry.url.startswith("https://") and entry.licence and entry.class_order_source
        # Written without a network: no file was read, so no hash may be claimed (docs/decisions.md).
        assert entry.sha256 is None, f"{name}: a SHA-256 is committed only after checking the real file"
        assert "unverified" in (RELEASED_DIR / f"{name}.yaml").read_text()
        if entry.reported is not None:
            assert entry.reported.student and entry.reported.table and 0 < entry.reported.accuracy < 100


@pytest.fixture
def archive(tmp_path, tiny_real):
    """A released set as a zip of class folders in one top folder (as SRe2L's are), of real Fashion-MNIST images."""
    root = tmp_path / "made" / "my_set_ipc2"
    for label, key in enumerate(tiny_real.classes[:3]):
        (root / key).mkdir(parents=True)
        save_images(tiny_real.train.class_images(label)[:2].float() / 255, root / key)
    path = tmp_path / "my_set_ipc2.zip"
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(root.rglob("*.png")):
            z.write(f, f.relative_to(root.parent).as_posix())
    return path


def _registry(tmp_path, name="my-set", **fields):
    folder = tmp_path / "registry"
    folder.mkdir(exist_ok=True)
    entry = {
        "name": name,
        "paper": "a paper",
        "repository": "a repository",
        "suite": "fashion-mnist",
        "ipc": 2,
        "download": "url",
        "url": "file:///nowhere.zip",
        "sha256": None,
        "class_order": {"folders": "name", "order": "the suite's class names", "source": "its README"},
        "licence": "CC-BY-4.0",
        "reported": {"accuracy": 61.5, "student": "convnet3", "protocol": "hard labels", "table": "Table 1"},
        **fields,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(entry))
    return folder


def _fetch(capsys, *argv):
    """`ddbench fetch-set ...`: (exit status, stdout lines, stderr lines)."""
    try:
        status = main(["fetch-set", *map(str, argv)])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out.strip().splitlines(), err.strip().splitlines()


def test_a_set_on_a_file_url_is_fetched_verified_and_unpacked(tmp_path, archive, tiny_real, capsys):
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    registry = _registry(tmp_path, url=archive.as_uri(), sha256=sha)
    to = tmp_path / "fetched"
    status, out, err = _fetch(capsys, "my-set", "--to", to, "--registry", registry)
    assert status == 0 and not err
    assert f"SHA-256 {sha} (verified against the registry)" in out[0]
    set_dir = to / "my_set_ipc2" / "my_set_ipc2"  # the archive's one top folder is looked into
    assert sorted(p.name for p in set_dir.iterdir()) == sorted(tiny_real.classes[:3])
    assert (
        out[-1]
        == shlex.join(["ddbench", "evaluate", "--suite", "fashion-mnist", "--set", str(set_dir), "--name", "my-set"])
        + " --reported 61.5"
    )
    # Again: the file is there and checked again, not downloaded; the unpacked folder is reused.
    archive.unlink()
    status, out2, _ = _fetch(capsys, "my-set", "--to", to, "--registry", registry)
    assert status == 0 and out2 == out


def test_a_wrong_checksum_is_refused_in_one_line(tmp_path, archive, capsys):
    registry = _registry(tmp_path, url=archive.as_uri(), sha256="0" * 64)
    status, out, err = _fetch(capsys, "my-set", "--to", tmp_path / "fetched", "--registry", registry)
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert status == 2 and len(err) == 1 and not any("evaluate" in line for line in out)
    assert f"has SHA-256 {actual}, the registry records {'0' * 64}" in err[0]
    assert not (tmp_path / "fetched" / "my_set_ipc2").exists()  # nothing unpacked from a file that is not the set


def test_an_unverified_entry_is_refused_unless_its_hash_is_recorded(tmp_path, archive, capsys):
    registry = _registry(tmp_path, url=archive.as_uri())
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    status, _, err = _fetch(capsys, "my-set", "--to", tmp_path / "fetched", "--registry", registry)
    assert status == 2 and len(err) == 1 and "records no SHA-256" in err[0] and f"sha256: {sha}" in err[0]
    status, out, err = _fetch(capsys, "my-set", "--to", tmp_path / "fetched", "--registry", registry, "--record-hash")
    assert status == 0 and "UNVERIFIED" in out[0] and out[1].endswith(f"sha256: {sha}")


def test_an_unreachable_url_says_what_to_download_by_hand(tmp_path, capsys):
    registry = _registry(tmp_path, url="http://127.0.0.1:9/released/my-set.zip", sha256="1" * 64)
    to = tmp_path / "fetched"
    status, out, err = _fetch(capsys, "my-set", "--to", to, "--registry", registry)
    assert status == 2 and len(err) == 1 and not out
    assert f"download http://127.0.0.1:9/released/my-set.zip by hand into {to / 'my-set.zip'}" in err[0]
    assert list(to.iterdir()) == []  # no partial file left behind


def test_a_google_drive_set_is_downloaded_by_hand_then_fetched(tmp_path, archive, capsys):
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = "https://drive.google.com/file/d/abc"
    registry = _registry(tmp_path, download="manual", url=url, file="my-set.zip", sha256=sha)
    to = tmp_path / "fetched"
    status, _, err = _fetch(capsys, "my-set", "--to", to, "--registry", registry)
    assert status == 2 and err == [
        f"ddbench: error: my-set: its file needs a browser (Google Drive): download {url} by hand into "
        f"{to / 'my-set.zip'} and run the same command again"
    ]
    (to / "my-set.zip").write_bytes(archive.read_bytes())  # what the person does
    status, out, _ = _fetch(capsys, "my-set", "--to", to, "--registry", registry)
    assert status == 0 and "--set " + str(to / "my-set" / "my_set_ipc2") in out[-1]


def test_a_tar_archive_unpacks_and_an_unsafe_zip_is_refused(tmp_path, archive, capsys):
    tar = tmp_path / "set.tar.gz"
    with zipfile.ZipFile(archive) as z, tarfile.open(tar, "w:gz") as t:
        for member in z.namelist():
            info = tarfile.TarInfo(member)
            data = z.read(member)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    registry = _registry(tmp_path, url=tar.as_uri(), sha256=hashlib.sha256(tar.read_bytes()).hexdigest())
    status, out, _ = _fetch(capsys, "my-set", "--to", tmp_path / "a", "--registry", registry)
    assert status == 0 and (tmp_path / "a" / "set" / "my_set_ipc2").is_dir()
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as z:
        z.writestr("../escaped.png", b"x")
    registry = _registry(tmp_path, url=unsafe.as_uri(), sha256=hashlib.sha256(unsafe.read_bytes()).hexdigest())
    status, _, err = _fetch(capsys, "my-set", "--to", tmp_path / "b", "--registry", registry)
    assert status == 2 and len(err) == 1 and "unsafe path" in err[0] and not (tmp_path / "escaped.png").exists()


BAD = [
    ("not YAML", "name: [unclosed", "not valid YAML at line"),
    ("unknown field", {"colour": "red"}, "unknown fields colour"),
    ("missing field", {"licence": None}, "licence: expected a non-empty string"),
    ("bad hash", {"sha256": "ABC"}, "sha256: expected 64 lowercase hex digits or null"),
    ("bad download", {"download": "ftp"}, "download: expected one of url, manual, huggingface"),
    ("bad IPC", {"ipc": 0}, "ipc: expected a positive integer or null"),
    ("bad class folders", {"class_order": {"folders": "colour", "order": "", "source": ""}}, "class_order.folders"),
    ("bad reported", {"reported": {"accuracy": 461, "student": "s", "protocol": "p", "table": "t"}}, "percentage"),
    ("another name", {"name": "other"}, "is not the file's name"),
    ("huggingface without a folder", {"download": "huggingface"}, "huggingface: {repo, folder} is given with"),
]


@pytest.mark.parametrize("case,change,message", BAD, ids=[c[0] for c in BAD])
def test_a_bad_registry_file_is_one_line(tmp_path, capsys, case, change, message):
    registry = _registry(tmp_path)
    path = registry / "my-set.yaml"
    if isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **change}))
    status, out, err = _fetch(capsys, "my-set", "--to", tmp_path / "fetched", "--registry", registry)
    assert status == 2 and len(err) == 1 and not out and message in err[0] and str(path) in err[0]
    assert not (tmp_path / "fetched").exists()  # refused before anything is made


def test_an_unknown_name_lists_the_registry(capsys):
    status, _, err = _fetch(capsys, "no-such-set", "--to", "/nonexistent")
    assert status == 2 and len(err) == 1 and "sre2l-in1k-rn18-4k-ipc50" in err[0]


def test_a_folders_hash_is_of_its_files_not_where_it_is(tmp_path):
    for where in ("a", "b"):
        (tmp_path / where / "n01").mkdir(parents=True)
        (tmp_path / where / "n01" / "0.png").write_bytes(b"one")
    assert tree_sha256(tmp_path / "a") == tree_sha256(tmp_path / "b")
    (tmp_path / "b" / "n01" / "0.png").write_bytes(b"two")
    assert tree_sha256(tmp_path / "a") != tree_sha256(tmp_path / "b")
