"""The data manifest: good files verify, a changed byte is named, missing files and malformed manifests are clear."""

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
    data = tmp_path / "a.bin"
    data.write_bytes(b"\x00\x01\x02" * 1000)
    body = f"""version: 1
datasets:
  - name: a
    kind: bundled
    path: a.bin
    sha256: {sha256_path(data)}
  - name: gen
    kind: generated
    path: gen
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
        ("datasets:\n  - {name: a, kind: weird, path: x, sha256: null}\n", "kind 'weird' is not one of"),
        ("datasets:\n  - {name: a, kind: bundled, path: x}\n", "a bundled data set needs a sha256"),
        ("datasets:\n  - {name: a, kind: bundled, path: x, sha256: abc}\n", "sha256 must be 64 lowercase hex"),
        ("datasets:\n  - {kind: bundled, path: x}\n", "field 'name' is missing"),
        ("datasets:\n  - {name: g, kind: generated, path: x, seed: 1}\n", "needs recipe.function"),
        ("datasets:\n  - {name: e, kind: external, path: x, url: 'https://h/x'}\n", "needs a sha256 \\(or the publisher's md5\\)"),
        (f"datasets:\n  - {{name: b, kind: bundled, path: x, sha256: {'a' * 64}, md5: {'a' * 32}}}\n", "md5 is for external data sets only"),
        ("datasets:\n  - {name: e, kind: external, path: x, url: 'https://h/x', md5: abc}\n", "32 lowercase hex digits, got 'abc'"),
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

    data = tmp_path / "t.mrc"
    data.write_bytes(b"tomogram bytes")
    body = f"datasets:\n  - {{name: t, kind: external, path: t.mrc, url: 'https://h/t.mrc', md5: {hashlib.md5(data.read_bytes()).hexdigest()}}}\n"
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
