"""Generated data sets: damaged partial sets are repaired bit-identically, damaged finished sets are named,
one process at a time generates a set (the other waits and says for whom)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cryonb.simulate.dataset as dataset_module
from cryonb.cli import main as cli_main
from cryonb.errors import CryoNBError
from cryonb.simulate import DatasetRecipe, SimulationConfig, SubtomoDataset, ensure_dataset, generate_dataset

CHUNK = 2  # 6 samples in 3 chunks


def _recipe(seed: int = 0) -> DatasetRecipe:
    sim = SimulationConfig(scene_size=32, crop_size=16, n_neighbours=1)
    return DatasetRecipe(name="tiny", classes=("4d4r", "3hhb"), n_per_class=3, snr=0.5, seed=seed, simulation=sim)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> SubtomoDataset:
    return ensure_dataset(_recipe(), n_workers=1, progress=False, root_dir=tmp_path_factory.mktemp("ref"))


def _interrupted_after(n_chunks: int, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Generate ``root`` until ``n_chunks`` chunks are stored, then stop as Ctrl-C (or SIGKILL) would."""
    real = dataset_module._run_chunk
    calls = []

    def run_then_stop(bounds: tuple[int, int]):  # noqa: ANN202
        if len(calls) == n_chunks:
            raise KeyboardInterrupt
        calls.append(bounds)
        return real(bounds)

    with monkeypatch.context() as m:
        m.setattr(dataset_module, "_run_chunk", run_then_stop)
        with pytest.raises(KeyboardInterrupt):
            generate_dataset(_recipe(), root, n_workers=1, chunk_size=CHUNK, progress=False)
    partial = root.with_name(root.name + ".partial")
    assert (partial / "rows" / "00000000.csv").is_file() and not root.exists()
    return partial


def _same(a: SubtomoDataset, b: SubtomoDataset) -> None:
    assert np.array_equal(np.asarray(a.volumes), np.asarray(b.volumes))
    assert np.array_equal(np.asarray(a.masks), np.asarray(b.masks))
    assert a.meta.equals(b.meta)


def test_truncated_partial_is_regenerated_not_zero_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reference: SubtomoDataset
) -> None:
    root = tmp_path / "set"
    partial = _interrupted_after(2, root, monkeypatch)
    volumes = partial / "volumes.npy"
    full = volumes.stat().st_size
    chunk_bytes = CHUNK * 16**3 * 4
    cut = full - 2 * chunk_bytes + chunk_bytes // 2  # the header, chunk 0, half of chunk 1 (both finished)
    os.truncate(volumes, cut)
    capsys.readouterr()
    generate_dataset(_recipe(), root, n_workers=1, chunk_size=CHUNK, progress=False)
    err = capsys.readouterr().err
    assert f"volumes.npy is {cut} bytes, expected {full}" in err
    assert "1 of 2 finished chunk(s) are damaged or lost their rows file; generating those samples again" in err
    _same(SubtomoDataset(root), reference)


def test_lost_rows_file_or_altered_chunk_is_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: SubtomoDataset
) -> None:
    root = tmp_path / "set"
    partial = _interrupted_after(2, root, monkeypatch)
    (partial / "rows" / "00000000.csv").unlink()  # today: a traceback on every rerun
    with open(partial / "masks.npy", "r+b") as fh:  # and a flipped byte in chunk 1's masks
        fh.seek(128 + CHUNK * 16**3 + 5)
        fh.write(b"\x07")
    generate_dataset(_recipe(), root, n_workers=1, chunk_size=CHUNK, progress=False)
    _same(SubtomoDataset(root), reference)


def test_partial_that_is_not_a_folder_names_what_to_delete(tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.with_name("set.partial").write_text("not a folder")
    with pytest.raises(CryoNBError, match=r"set\.partial: expected the folder of a partial data set; delete .*set\.partial and run again"):
        generate_dataset(_recipe(), root, n_workers=1, progress=False)


def test_damaged_finished_set_is_detected_and_the_folder_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = ensure_dataset(_recipe(), n_workers=1, progress=False, root_dir=tmp_path)
    root = ds.root
    del ds
    with open(root / "volumes.npy", "r+b") as fh:  # 4 KB of zeros in the middle, size unchanged
        fh.seek(20_000)
        fh.write(bytes(4096))
    message = rf"{root}: damaged data set: volumes\.npy has sha256 .*, recipe\.json records .*; delete the folder {root} and run again"
    with pytest.raises(CryoNBError, match=message):
        SubtomoDataset(root)
    with pytest.raises(CryoNBError, match=message):
        ensure_dataset(_recipe(), n_workers=1, progress=False, root_dir=tmp_path)
    assert cli_main(["export-mrc", str(root), "0", "-o", str(tmp_path / "x.mrc")]) == 2
    assert "damaged data set: volumes.npy" in capsys.readouterr().err
    os.truncate(root / "masks.npy", 1000)  # a short file: named by its size, before any hashing
    with pytest.raises(CryoNBError, match=r"damaged data set: masks\.npy is 1000 bytes, expected 24704"):
        SubtomoDataset(root)


def test_verified_stamp_spares_rehashing_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ensure_dataset(_recipe(), n_workers=1, progress=False, root_dir=tmp_path).root
    monkeypatch.setattr(dataset_module, "_STAMP_MARGIN_NS", -10**12)  # files count as settled at once
    SubtomoDataset(root)  # verifies and writes the stamp
    assert (tmp_path / f".{root.name}.verified.json").is_file()

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(dataset_module, "file_digest", no_hashing)
    SubtomoDataset(root)
    with open(root / "meta.csv", "a", encoding="utf-8") as fh:
        fh.write("\n")  # another size: the stamp no longer applies
    with pytest.raises(AssertionError, match=r"was hashed again"):
        SubtomoDataset(root)


# ---- concurrency: one writer, the other waits ----------------------------------------------------

_FIRST = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import cryonb.simulate.dataset as d
    from cryonb.simulate import DatasetRecipe, SimulationConfig, ensure_dataset
    recipe = DatasetRecipe(name="tiny", classes=("4d4r", "3hhb"), n_per_class=3, snr=0.5, seed=0,
                           simulation=SimulationConfig(scene_size=32, crop_size=16, n_neighbours=1))
    base = Path(sys.argv[1])
    real_run = d._run_chunk
    def run(bounds):
        if bounds[0] == 0:  # hold the lock mid-generation until the test says go
            (base / "started").touch()
            while not (base / "go").exists():
                time.sleep(0.05)
        return real_run(bounds)
    d._run_chunk = run
    print(ensure_dataset(recipe, n_workers=1, progress=False, root_dir=base).root, flush=True)
""")


def _wait_for(done: Callable[[], bool], proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120  # a generous bound on a loaded machine; not a timing assertion
    while not done():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the other process never got there"
        time.sleep(0.05)


def test_second_process_waits_for_the_first_then_reuses_its_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = subprocess.Popen([sys.executable, "-c", _FIRST, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for((tmp_path / "started").exists, first)
        # this process is the second writer: with a timeout it gives up and says who holds the set
        with pytest.raises(CryoNBError, match=rf"being generated by pid {first.pid} on host .*; gave up waiting after 0\.2 s"):
            ensure_dataset(_recipe(), n_workers=1, progress=False, root_dir=tmp_path, lock_timeout_s=0.2)
        generated = []
        monkeypatch.setattr(dataset_module, "_generate", lambda *a: generated.append(a))
        result: list[SubtomoDataset] = []
        waiter = threading.Thread(target=lambda: result.append(
            ensure_dataset(_recipe(), n_workers=1, progress=False, root_dir=tmp_path)))
        waiter.start()
        seen: list[str] = []
        _wait_for(lambda: seen.append(capsys.readouterr().err) or "waiting for it to finish" in "".join(seen), first)
        assert f"being generated by pid {first.pid} on host" in "".join(seen)
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=300)
        waiter.join(timeout=300)
    finally:
        (tmp_path / "go").touch()
        first.kill()
    assert first.returncode == 0, err
    assert not generated and len(result) == 1  # the second writer waited, then reused the first's set
    assert str(result[0].root) == out.strip() and len(result[0]) == 6


# ---- the simulate command's arguments ---------------------------------------------------------------

def test_simulate_cli_rejects_bad_snr_and_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["simulate", "cssl", "--snr", "abc", "--n-per-class", "2"]) == 2
    assert "cryonb simulate: error: snr='abc': expected a number > 0 (or inf for no noise)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["simulate", "cssl", "--seed", "-1"])
    assert exit_info.value.code == 2
    assert "argument --seed: expected an integer >= 0, got '-1'" in capsys.readouterr().err
    with pytest.raises(CryoNBError, match=r"seed=-1: expected an integer >= 0"):
        DatasetRecipe(name="x", classes=("4d4r",), n_per_class=1, snr=1.0, seed=-1)
