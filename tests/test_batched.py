"""fit_many: N models trained together equal the same N trained one at a time (threads: bit for bit; vmap: to
float tolerance), resume after a kill, a NaN names its model, each model keeps its own best epoch and files.

Tolerance of the vmap executor (CPU, float32): every weight and statistic agrees to 1e-6 absolute after 6 steps
(measured: ≤ 1.2e-7). They cannot agree bit for bit: a vmapped step runs ``groups=N`` convolutions and BatchNorm
over N·C channels, whose kernels sum in another order than the single-model kernels (float addition is not
associative), so sums differ in their last bits (~1e-7 relative). NOTE: with Adam *and* BatchNorm, the bias of a
convolution in front of a BatchNorm has gradient exactly 0 in exact arithmetic; its computed gradient is rounding
noise, which Adam divides by its own RMS and turns into steps of up to ``lr`` (measured: 8e-5 at lr 1e-2; the same
for COS-Net's last feature bias, which cancels in |f_s − f_t|). Those biases do not change the network's output,
so Adam is checked on RB3D without BatchNorm, and BatchNorm and COS-Net with SGD + momentum.

The vmap comparisons train both sides in torch's default layout (``CRYONB_CHANNELS_LAST=0``): on CPU, ``fit``
trains 3-D convolution models in ``channels_last_3d`` (faster), whose BatchNorm kernel is less precise (measured:
forward error 5e-5 against float64, 1e-7 contiguous), which tiny networks amplify within a few steps; the
threads executor trains in the same layout as ``fit`` and stays bit for bit.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from cryonb import CryoNBError, checkpoints
from cryonb.data import iterate_batches
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.train import TrainConfig, fit, fit_many

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = RB3DConfig(n_classes=3, width=4, embedding_dim=8, pool_size=2)  # dropout 0.5 and BatchNorm: both per model
SIZES = (8, 7, 6, 9)  # unequal data: models run out of batches at different steps, last batches differ in size
TOL = 1e-6


def _data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(SIZES[i], 1, 8, 8, 8, generator=g), torch.randint(0, 3, (SIZES[i],), generator=g)


def _batches(i: int):  # noqa: ANN202
    x, y = _data(i)

    def batches(epoch: int, g: torch.Generator):  # noqa: ANN202
        for idx in iterate_batches(len(x), 4, g):
            yield x[idx] + 0.1 * torch.randn(len(idx), 1, 8, 8, 8, generator=g), y[idx]  # an "augmentation" from the model's stream

    return batches


def _loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"loss": nn.functional.cross_entropy(m(b[0]), b[1])}


def _models(n: int = 4, norm: str = "batch") -> list[RB3D]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(RB3D(replace(MODEL, norm=norm)))
    return out


def _cfg(optimizer: str, epochs: int = 2) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=0.01, weight_decay=1e-3, optimizer=optimizer, scheduler="cosine")


def _validate(i: int):  # noqa: ANN202
    x, y = _data(i)
    return lambda m: {"val_acc": float((m(x).argmax(1) == y).float().mean())}


def _alone(cfg: TrainConfig, root: Path | None = None, norm: str = "batch", **kw: object) -> list[RB3D]:
    models = _models(norm=norm)
    for i, m in enumerate(models):
        fit(m, _loss, _batches(i), cfg, seed=10 + i, checkpoint_dir=root / f"m{i}" if root else None, progress=False,
            validate=_validate(i), select_metric="val_acc", best_kind="rb3d", best_meta={"seed": 10 + i}, **kw)
    return models


def _together(cfg: TrainConfig, executor: str, root: Path | None = None, norm: str = "batch", **kw: object) -> tuple[list[RB3D], list]:
    models = _models(norm=norm)
    histories = fit_many(models, _loss, [_batches(i) for i in range(4)], cfg, seeds=[10 + i for i in range(4)], progress=False,
                         checkpoint_dirs=[root / f"m{i}" for i in range(4)] if root else None, validate=[_validate(i) for i in range(4)],
                         select_metric="val_acc", best_kind="rb3d", best_meta=[{"seed": 10 + i} for i in range(4)], executor=executor, **kw)
    return models, histories


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p.float() - q.float()).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("optimizer", ["adam"])
def test_threads_equal_one_at_a_time_bit_for_bit(optimizer: str) -> None:
    alone = _alone(_cfg(optimizer))
    together, _ = _together(_cfg(optimizer), "threads", workers=2)
    assert all(_max_diff(a, b) == 0 for a, b in zip(alone, together))
    assert _max_diff(alone[0], alone[1]) > 0.01  # the models differ: seeds, data, dropout masks


@pytest.mark.parametrize(("optimizer", "norm"), [("sgd", "batch"), ("adam", "none")])
def test_vmap_equals_one_at_a_time_to_float_tolerance(optimizer: str, norm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYONB_CHANNELS_LAST", "0")  # both sides in one layout (module docstring)
    alone = _alone(_cfg(optimizer), norm=norm)
    together, _ = _together(_cfg(optimizer), "vmap", norm=norm)
    diffs = [_max_diff(a, b) for a, b in zip(alone, together)]
    assert max(diffs) < TOL, diffs
    assert _max_diff(alone[0], alone[1]) > 0.01


@pytest.mark.parametrize("executor", ["threads", "vmap"])
def test_files_are_those_of_a_model_trained_alone(tmp_path: Path, executor: str) -> None:
    _alone(_cfg("adam"), tmp_path / "alone")
    _, histories = _together(_cfg("adam"), executor, tmp_path / "together")
    for i in range(4):
        a, b = tmp_path / "alone" / f"m{i}", tmp_path / "together" / f"m{i}"
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
        sa, sb = checkpoints.load_state(a / "last.pt"), checkpoints.load_state(b / "last.pt")  # weights_only=True
        assert sa.keys() == sb.keys() and sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
        assert sa["history"]["best_epoch"] == sb["history"]["best_epoch"] == histories[i].best_epoch
        best = checkpoints.load(b / "best.pt", "rb3d")
        assert best["seed"] == 10 + i and best["epoch"] == histories[i].best_epoch - 1
        assert len(b.joinpath("metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("executor", ["threads", "vmap"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path: Path, executor: str) -> None:
    straight, _ = _together(_cfg("sgd", epochs=2), executor, tmp_path / "a")
    calls = iter(range(1000))

    def kill(m: nn.Module, b: object, o: object) -> None:
        if next(calls) == 12:  # of 18 steps in all (2 + 2 + 2 + 3 per epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _together(_cfg("sgd", epochs=2), executor, tmp_path / "b", on_step_end=kill)
    last = [tmp_path / "b" / f"m{i}" / "last.pt" for i in range(4)]
    assert min(checkpoints.load_state(p)["epoch"] if p.is_file() else -1 for p in last) < 1  # killed before every model was done
    resumed, histories = _together(_cfg("sgd", epochs=2), executor, tmp_path / "b")  # a new process: fresh weights, last.pt found
    assert all(_max_diff(a, b) == 0 for a, b in zip(straight, resumed))
    assert all([e["epoch"] for e in h.epochs] == [1, 2] for h in histories)


@pytest.mark.parametrize("executor", ["threads", "vmap"])
def test_a_used_time_budget_stops_after_saved_epochs_and_the_same_call_continues(tmp_path: Path, executor: str,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from cryonb import budget

    straight, _ = _together(_cfg("sgd"), executor, tmp_path / "a")
    monkeypatch.setenv(budget.DEADLINE_ENV, repr(time.time() - 1))  # already used: stop at the first saved epoch
    with pytest.raises(budget.PartDone, match="time budget used up"):
        _together(_cfg("sgd"), executor, tmp_path / "b", workers=2)
    assert {checkpoints.load_state(p)["epoch"] for p in (tmp_path / "b").glob("m*/last.pt")} == {0}
    monkeypatch.delenv(budget.DEADLINE_ENV)
    resumed, histories = _together(_cfg("sgd"), executor, tmp_path / "b", workers=2)
    assert all(_max_diff(a, b) == 0 for a, b in zip(straight, resumed)) and all(len(h.epochs) == 2 for h in histories)


@pytest.mark.parametrize("executor", ["threads", "vmap"])
def test_a_nan_names_its_model_and_the_others_keep_their_checkpoints(tmp_path: Path, executor: str) -> None:
    def poisoned(epoch: int, g: torch.Generator):  # noqa: ANN202
        for x, y in _batches(2)(epoch, g):
            yield (x * float("nan") if epoch == 1 else x), y  # model 2's inputs turn NaN in epoch 2

    sources = [_batches(0), _batches(1), poisoned, _batches(3)]
    with pytest.raises(CryoNBError, match=r"model 2 \(seed 12, .*m2\): epoch 2 step 1: loss is nan .*last good checkpoint kept at .*m2.last\.pt"):
        fit_many(_models(), _loss, sources, _cfg("sgd", 3), seeds=[10, 11, 12, 13], progress=False,
                 checkpoint_dirs=[tmp_path / f"m{i}" for i in range(4)], executor=executor, workers=2)
    assert checkpoints.load_state(tmp_path / "m2" / "last.pt")["epoch"] == 0
    assert all(checkpoints.load_state(tmp_path / f"m{i}" / "last.pt")["epoch"] >= 0 for i in (0, 1))  # trained before model 2 started


@pytest.mark.parametrize("executor", ["threads", "vmap"])
def test_each_model_keeps_its_own_best_epoch(tmp_path: Path, executor: str) -> None:
    scores = {0: [0.1, 0.9, 0.2], 1: [0.8, 0.1, 0.3], 2: [0.1, 0.2, 0.7], 3: [0.5, 0.5, 0.5]}
    validates = [(lambda m, s=iter(v): {"val_acc": next(s)}) for v in scores.values()]
    histories = fit_many(_models(), _loss, [_batches(i) for i in range(4)], _cfg("adam", 3), seeds=[0, 1, 2, 3], progress=False,
                         checkpoint_dirs=[tmp_path / f"m{i}" for i in range(4)], validate=validates, select_metric="val_acc",
                         best_kind="rb3d", executor=executor)
    assert [h.best_epoch for h in histories] == [2, 1, 3, 1]
    for i, h in enumerate(histories):
        best = checkpoints.load(tmp_path / f"m{i}" / "best.pt", "rb3d")
        assert best["epoch"] == h.best_epoch - 1 and all(torch.equal(best["model"][k], v) for k, v in h.best_state.items())


def test_bad_arguments_name_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(CryoNBError, match="executor='gpu'"):
        fit_many(_models(2), _loss, [_batches(0), _batches(1)], _cfg("sgd"), seeds=[0, 1], executor="gpu")
    with pytest.raises(CryoNBError, match="2 models but 1 seeds"):
        fit_many(_models(2), _loss, [_batches(0), _batches(1)], _cfg("sgd"), seeds=[0])
    with pytest.raises(CryoNBError, match="checkpoint_dirs: two models share a folder"):
        fit_many(_models(2), _loss, [_batches(0), _batches(1)], _cfg("sgd"), seeds=[0, 1], checkpoint_dirs=[tmp_path, tmp_path])
    with pytest.raises(CryoNBError, match="validate: 3 given for 2 models"):
        fit_many(_models(2), _loss, [_batches(0), _batches(1)], _cfg("sgd"), seeds=[0, 1], validate=[None] * 3)


# --- the steps' batched entry points: each run equals the run its single-model function trains ---------------


def _state_equal(a: nn.Module, b: nn.Module, tol: float = 0.0) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and _max_diff(a, b) <= tol


def test_finetune_runs_equal_finetune_run(tmp_path: Path) -> None:
    from test_finetune import CFG, TinyDataset

    from cryonb.finetune import FinetuneJob, finetune_run, finetune_runs

    ds = TinyDataset()
    jobs = [FinetuneJob(ds, fraction, seed, tmp_path / "b" / f"{fraction}-{seed}", meta={"init": "random"}) for fraction, seed in [(0.5, 0), (1.0, 1), (1.0, 2)]]
    rows = finetune_runs(jobs, CFG, base_seed=0, workers=2)
    for job, row in zip(jobs, rows):
        alone = finetune_run(ds, CFG, fraction=job.fraction, seed=job.seed, base_seed=0, folder=tmp_path / "a" / job.folder.name, meta=job.meta)
        assert {k: v for k, v in row.items() if k != "wall_s"} == {k: v for k, v in alone.items() if k != "wall_s"}
        a, b = checkpoints.load(tmp_path / "a" / job.folder.name / "best.pt", "rb3d"), checkpoints.load(job.folder / "best.pt", "rb3d")
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["seeds"] == b["seeds"] and a["fraction"] == b["fraction"]
    assert rows[0]["n_train"] < rows[1]["n_train"]  # unequal data sizes trained together


def test_sweep_in_batches_gives_the_one_at_a_time_table(tmp_path: Path) -> None:
    from test_finetune import CFG, TinyDataset

    from cryonb.finetune import SweepConfig, sweep

    cells = SweepConfig(inits=("random",), fractions=(0.5, 1.0), runs=2)
    one = sweep({0.1: TinyDataset()}, lambda s, i: None, CFG, cells, tmp_path / "one", seed=0, progress=False)
    part = sweep({0.1: TinyDataset()}, lambda s, i: None, CFG, cells, tmp_path / "many", seed=0, progress=False, runs_per_batch=3, max_runs=3)
    assert len(part) == 3  # an interrupted batched sweep resumes from its table
    many = sweep({0.1: TinyDataset()}, lambda s, i: None, CFG, cells, tmp_path / "many", seed=0, progress=False, runs_per_batch=3)
    cols = ["snr", "init", "fraction", "run", "seed", "n_train", "best_epoch", "val_acc", "test_acc"]
    assert one[cols].astype(str).equals(many[cols].astype(str))


@pytest.mark.parametrize("executor", ["threads", "vmap"])
def test_pretrain_many_equals_pretrain(tmp_path: Path, executor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if executor == "vmap":
        monkeypatch.setenv("CRYONB_CHANNELS_LAST", "0")  # both sides in one layout (module docstring)
    from test_finetune import TinyDataset

    from cryonb.pretrain import PretrainConfig, PretrainJob, pretrain, pretrain_many

    ds = TinyDataset()
    ds.meta["split"] = "train"
    cfg = PretrainConfig(model=RB3DConfig(n_classes=2, width=4, embedding_dim=8, norm="none"), train=TrainConfig(epochs=2, lr=1e-3), batch_size=4)
    methods = ["moco", "simclr", "moco"] + (["swav"] if executor == "threads" else [])
    jobs = [PretrainJob(m, ds, seed, tmp_path / f"{m}{seed}") for seed, m in enumerate(methods)]
    together = pretrain_many(jobs, cfg, progress=False, executor=executor, workers=2)
    for job, (encoder, history) in zip(jobs, together):
        alone, h = pretrain(job.method, ds, cfg, seed=job.seed, progress=False)
        assert _state_equal(encoder, alone, 0.0 if executor == "threads" else TOL), job
        assert [round(e["loss"], 4) for e in history.epochs] == [round(e["loss"], 4) for e in h.epochs]
        assert checkpoints.load_state(job.checkpoint_dir / "last.pt")["epoch"] == 1
    assert _max_diff(together[0][0], together[2][0]) > 1e-3  # same method, other seed: another model


def _cosnet_toy(box: int = 16):  # noqa: ANN202
    """test_oneshot's toy at 16³: cubes of a class-dependent size in noise, the cubes as masks; class 3 unseen."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    masks = np.zeros((12, box, box, box), np.uint8)
    for k, c in enumerate(labels):
        h, m = 2 + c, box // 2
        masks[k, m - h : m + h, m - h : m + h, m - h : m + h] = 1
    volumes = (masks + 0.3 * rng.standard_normal(masks.shape)).astype(np.float32)
    meta = pd.DataFrame({"class_id": labels, "class_split": np.where(labels < 3, "seen", "unseen")})
    return SimpleNamespace(volumes=volumes, masks=masks, meta=meta, indices=lambda class_split: np.flatnonzero(meta["class_split"] == class_split))


@pytest.mark.parametrize("executor", ["threads", "vmap"])
def test_train_cosnet_many_equals_train_cosnet(executor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if executor == "vmap":
        monkeypatch.setenv("CRYONB_CHANNELS_LAST", "0")  # both sides in one layout (module docstring)
    from test_oneshot import CFG as COSNET_CFG

    from cryonb.oneshot import COSNetJob, train_cosnet, train_cosnet_many

    t = _cosnet_toy()
    labels, pool = t.meta["class_id"].to_numpy(), t.indices(class_split="seen")
    CFG = COSNET_CFG
    if executor == "vmap":  # Adam would amplify rounding in biases with zero true gradient (module docstring)
        CFG = replace(CFG, train=replace(CFG.train, optimizer="sgd", lr=0.01))
    specs = [("DuSE-SCNN+decoder", 2, 0), ("DuSE-SCNN+decoder", 2, 1), ("SCNN", 3, 2)]  # two of one variant, one other
    jobs = [COSNetJob(CFG.for_job(v, n), t.volumes, t.masks, labels, pool, seed) for v, n, seed in specs]
    together = train_cosnet_many(jobs, progress=False, executor=executor, workers=2)
    for job, (net, log) in zip(jobs, together):
        alone, alone_log = train_cosnet(job.cfg, t.volumes, t.masks, labels, pool, seed=job.seed, progress=False)
        assert _state_equal(net, alone, 0.0 if executor == "threads" else TOL), job.seed
        assert [r["step"] for r in log] == [r["step"] for r in alone_log] and not net.training


def test_same_seed_same_bits_beside_a_cpu_burning_process() -> None:
    """Load changes timing, never results: a fixed thread count gives bit-identical weights beside a busy process,
    for one model on two OpenMP threads (barriers wait differently under load) and for fit_many's workers."""
    import hashlib
    import subprocess
    import sys

    def train() -> tuple[str, str]:
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            (alone,) = _models(1)
            fit(alone, _loss, _batches(0), _cfg("adam"), seed=10, progress=False)
        finally:
            torch.set_num_threads(before)
        together = _models(2)
        fit_many(together, _loss, [_batches(0), _batches(1)], _cfg("adam"), seeds=[10, 11], progress=False, workers=2)
        digest = lambda ms: hashlib.sha256(b"".join(v.numpy().tobytes() for m in ms for v in m.state_dict().values())).hexdigest()  # noqa: E731
        return digest([alone]), digest(together)

    idle = train()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = train()
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert loaded == idle
