"""The data manifest: good files verify, a changed byte is named, missing files and malformed manifests are clear."""

import os
from pathlib import Path

import pytest

from cryonb import CryoNBError
from cryonb.cli import main as cli_main
from cryonb.manifest import fetch, load_manifest, sha256_path, verify


def _manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(body)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data" / "a.bin"
    data.parent.mkdir()
    data.write_bytes(b"\x00\x01\x02" * 1000)
    body = f"""version: 1
datasets:
  - name: a
    kind: bundled
    path: data/a.bin
    sha256: {sha256_path(data)}
  - name: gen
    kind: generated
    path: data/gen
    recipe: {{function: cryonb.simulate.cssl_recipe, params: {{snr: 0.1}}}}
    seed: 0
"""
    return _manifest(tmp_path, body), data


def test_repository_manifest_verifies() -> None:
    results = verify(load_manifest())
    assert len(results) >= 15
    assert not [r for r in results if r.status == "mismatch"]
    assert sum(r.status == "ok" for r in results) >= 15


def test_good_file_and_missing_generated(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = dataset
    status = {r.name: r.status for r in verify(load_manifest(path), root=tmp_path)}
    assert status == {"a": "ok", "gen": "missing"}


def test_changed_byte_is_a_named_mismatch(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    path, data = dataset
    raw = bytearray(data.read_bytes())
    raw[1234] ^= 0xFF
    data.write_bytes(bytes(raw))
    (result,) = [r for r in verify(load_manifest(path), root=tmp_path) if r.name == "a"]
    assert result.status == "mismatch"
    assert "a.bin" in result.line() and result.expected in result.line()


def test_folder_checksum_changes_with_content(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "x.npy").write_bytes(b"1")
    first = sha256_path(folder)
    (folder / "x.npy").write_bytes(b"2")
    assert sha256_path(folder) != first


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("datasets: [", "not valid YAML"),
        ("version: 1\n", "expected a top-level mapping with a 'datasets' list"),
        ("datasets:\n  - {name: a, kind: weird, path: data/x, sha256: null}\n", "kind 'weird' is not one of"),
        ("datasets:\n  - {name: a, kind: bundled, path: data/x}\n", "a bundled data set needs a sha256"),
        ("datasets:\n  - {name: a, kind: bundled, path: data/x, sha256: abc}\n", "sha256 must be 64 lowercase hex"),
        ("datasets:\n  - {kind: bundled, path: data/x}\n", "field 'name' is missing"),
        ("datasets:\n  - {name: g, kind: generated, path: data/x, seed: 1}\n", "needs recipe.function"),
        ("datasets:\n  - {name: e, kind: external, path: data/x, url: 'https://h/x'}\n", "needs a sha256 \\(or the publisher's md5\\)"),
        (f"datasets:\n  - {{name: b, kind: bundled, path: data/x, sha256: {'a' * 64}, md5: {'a' * 32}}}\n", "md5 is for external data sets only"),
        ("datasets:\n  - {name: e, kind: external, path: data/x, url: 'https://h/x', md5: abc}\n", "32 lowercase hex digits, got 'abc'"),
    ],
)
def test_malformed_manifest(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(CryoNBError, match=message):
        load_manifest(_manifest(tmp_path, body))


def test_fetch_refuses_unknown_and_non_external(dataset: tuple[Path, Path]) -> None:
    path, _ = dataset
    entries = load_manifest(path)
    with pytest.raises(CryoNBError, match="unknown data set 'nope'"):
        fetch(entries, "nope")
    with pytest.raises(CryoNBError, match="is bundled, not external"):
        fetch(entries, "a")


def test_cli_verify_exit_codes(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path, data = dataset
    monkeypatch.setenv("CRYONB_ROOT", str(tmp_path))
    assert cli_main(["data", "verify", "--manifest", str(path)]) == 0
    data.write_bytes(b"changed")
    assert cli_main(["data", "verify", "--manifest", str(path)]) == 1
    assert "MISMATCH  a:" in capsys.readouterr().out


def test_generated_entries_match_their_recipes() -> None:
    # a changed simulator default changes the content hash; the manifest must follow
    import importlib

    for entry in load_manifest():
        if entry.kind != "generated":
            continue
        module, _, name = entry.recipe["function"].rpartition(".")
        recipe = getattr(importlib.import_module(module), name)(**entry.recipe["params"])
        assert entry.path == f"data/generated/{recipe.folder_name}", entry.name
        assert recipe.seed == entry.seed


def test_external_md5_entry_verifies_by_md5(tmp_path: Path) -> None:
    import hashlib

    data = tmp_path / "data" / "t.mrc"
    data.parent.mkdir()
    data.write_bytes(b"tomogram bytes")
    body = f"datasets:\n  - {{name: t, kind: external, path: data/t.mrc, url: 'https://h/t.mrc', md5: {hashlib.md5(data.read_bytes()).hexdigest()}}}\n"
    entries = load_manifest(_manifest(tmp_path, body))
    assert [r.status for r in verify(entries, root=tmp_path)] == ["ok"]
    data.write_bytes(b"tomogram bytez")
    (result,) = verify(entries, root=tmp_path)
    assert result.status == "mismatch" and "has md5 " in result.line()


def test_repository_manifest_offers_a_real_tomogram() -> None:
    real = [e for e in load_manifest() if e.kind == "external"]
    assert real, "data_manifest.yaml should name at least one public real tomogram"
    for e in real:
        assert e.url is not None and e.url.startswith("https://") and (e.sha256 or e.md5)
        assert e.path.startswith("data/external/")


# ---- containment: paths, URLs and special files -------------------------------------------------

@pytest.mark.parametrize("path", ["../x.bin", "/dev/zero", "data/../../x.bin", "C:/x.bin", "..\\\\x.bin", ".", "README.md", "data", "cryonb/x.py"])
def test_path_outside_the_data_folder_is_refused_at_load(tmp_path: Path, path: str) -> None:
    body = f"datasets:\n  - {{name: e, kind: external, path: '{path}', url: 'https://h/x', sha256: {'a' * 64}}}\n"
    with pytest.raises(CryoNBError, match=r"datasets\[0\] \(e\): path .* must stay inside the data folder: expected a relative path"):
        load_manifest(_manifest(tmp_path, body))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "data:text/plain,hello", "example.org/x.bin", "ftp://h/x", "http:///x"])
def test_only_http_urls_are_accepted(tmp_path: Path, url: str) -> None:
    body = f"datasets:\n  - {{name: e, kind: external, path: data/x.bin, url: '{url}', sha256: {'a' * 64}}}\n"
    with pytest.raises(CryoNBError, match=r"\(e\): url .*: expected an http:// or https:// address with a host"):
        load_manifest(_manifest(tmp_path, body))
    from cryonb.fetch import download_verified

    with pytest.raises(CryoNBError, match="expected an http:// or https:// address"):
        download_verified(url, tmp_path / "x.bin", "0" * 64, progress=False)
    assert not (tmp_path / "x.bin").exists()


def test_cli_verify_refuses_escapes_and_special_files_and_fails_on_missing_bundled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYONB_ROOT", str(tmp_path / "repo"))
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "zero").symlink_to("/dev/zero")  # would hang a checksum
    os.mkfifo(repo / "data" / "pipe")  # would block the open
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "data" / "ext").symlink_to(outside)
    sha = "a" * 64
    body = ("datasets:\n"
            f"  - {{name: zero, kind: bundled, path: data/zero, sha256: {sha}}}\n"
            f"  - {{name: pipe, kind: bundled, path: data/pipe, sha256: {sha}}}\n"
            f"  - {{name: escape, kind: external, path: data/ext/x.bin, url: 'https://h/x', sha256: {sha}}}\n")
    manifest = _manifest(tmp_path, body)
    assert cli_main(["data", "verify", "--manifest", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert f"REFUSED   zero: zero: data/zero leads to /dev/zero, outside {repo / 'data'}" in out
    assert f"REFUSED   pipe: {repo / 'data' / 'pipe'} is not a regular file (a device, pipe or socket)" in out
    assert f"REFUSED   escape: escape: data/ext/x.bin leads to {outside / 'x.bin'}, outside {repo / 'data'}" in out
    # a bundled file that is simply gone fails too (it cannot be regenerated or fetched)
    missing = _manifest(tmp_path, f"datasets:\n  - {{name: s, kind: bundled, path: data/s.pdb.gz, sha256: {sha}}}\n")
    assert cli_main(["data", "verify", "--manifest", str(missing)]) == 1
    out = capsys.readouterr().out
    assert "MISSING   s: " in out and "restore it with `git checkout -- data/s.pdb.gz`" in out and "1 bundled missing" in out
    # an absolute path is refused when the manifest is read: an error, not a hang
    absolute = _manifest(tmp_path, f"datasets:\n  - {{name: z, kind: bundled, path: /dev/zero, sha256: {sha}}}\n")
    assert cli_main(["data", "verify", "--manifest", str(absolute)]) == 2
    assert "path '/dev/zero' must stay inside the data folder" in capsys.readouterr().err


def test_fetch_never_writes_through_a_link_outside_or_onto_a_special_file(tmp_path: Path) -> None:
    from cryonb.fetch import download_verified

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.bin").write_bytes(b"precious")
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "ext").symlink_to(outside)
    sha = "a" * 64
    body = f"datasets:\n  - {{name: v, kind: external, path: data/ext/victim.bin, url: 'http://127.0.0.1:9/x', sha256: {sha}}}\n"
    with pytest.raises(CryoNBError, match=r"v: data/ext/victim\.bin leads to .*outside.*victim\.bin, outside"):
        fetch(load_manifest(_manifest(tmp_path, body)), "v", root=repo)
    assert (outside / "victim.bin").read_bytes() == b"precious"
    os.mkfifo(repo / "data" / "fifo.bin")
    with pytest.raises(CryoNBError, match=r"fifo\.bin: the download's destination is not a regular file .*; refusing"):
        download_verified("http://127.0.0.1:9/x", repo / "data" / "fifo.bin", sha, progress=False)
    (repo / "data" / "link.bin.part").symlink_to(outside / "victim.bin")
    with pytest.raises(CryoNBError, match=r"link\.bin\.part: the partial download is a symbolic link; refusing"):
        download_verified("http://127.0.0.1:9/x", repo / "data" / "link.bin", sha, progress=False)
    assert (outside / "victim.bin").read_bytes() == b"precious"


def test_generated_entries_cover_what_the_specs_build() -> None:
    """Every data set the quick and paper specs make is in the manifest (a spec change must update it)."""
    from cryonb.experiments import cosnet, cssl
    from cryonb.spec import load_profile

    listed = {e.path for e in load_manifest() if e.kind == "generated"}
    for profile in ("quick", "paper"):
        spec = load_profile(profile).spec
        for recipe in [*cssl.recipes(spec).values(), *cosnet.recipes(spec).values(), cssl.classifier_recipe(spec)]:
            assert f"data/generated/{recipe.folder_name}" in listed, f"{profile}: {recipe.name} is not in data_manifest.yaml"


def test_the_cosnet_split_in_every_spec_is_the_rule() -> None:
    """Issue #16: the split is fixed by a rule stated before any run, not chosen from accuracies."""
    from cryonb.spec import load_profile
    from cryonb.structures import ALL_CLASSES, CSSL_CLASSES, cosnet_split

    unseen, validation = cosnet_split()
    assert len(ALL_CLASSES) == 24 and len(unseen) == 8 and len(validation) == 2
    assert not set(unseen) & set(CSSL_CLASSES) and not set(validation) & set(CSSL_CLASSES)
    assert len(set(ALL_CLASSES) - set(unseen) - set(validation)) == 14  # the paper's 14 seen classes
    for profile in ("quick", "paper", "smoke"):
        data = load_profile(profile).spec.cosnet.data
        assert (data.unseen, data.validation) == (unseen, validation), profile
