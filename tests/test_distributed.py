"""A real 2-process DDP run on CPU (gloo): pretraining with global negatives and fine-tuning.

Both processes are started with ``torch.multiprocessing.spawn`` and configured through the
torchrun environment variables, so ``training.distributed.init_distributed`` takes the same
path as under ``torchrun --nproc_per_node 2``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from cavmae.config import FeatureConfig, cavmae_tiny
from training import finetune, pretrain
from training.checkpointing import load_state_dict_file
from training.config import FinetuneConfig, PretrainConfig, build_config
from training.data.streaming import ShardedDataset
from training.distributed import DistEnv, cleanup_distributed, init_distributed
from training.runs import read_metrics, read_run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


class RandomAV(Dataset):
    """Random clips in the tiny geometry, labels cycling over C classes (no augmentation)."""

    def __init__(self, n: int, num_classes: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        m = cavmae_tiny()
        self.fbank = torch.randn(n, m.audio_length, m.num_mel_bins, generator=g)
        self.image = torch.randn(n, 3, m.img_size, m.img_size, generator=g)
        self.labels_matrix = (
            nn.functional.one_hot(torch.arange(n) % num_classes, num_classes).float().numpy()
        )
        self.feature_config = FeatureConfig.for_model(m)
        self.label_names = [f"class{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.fbank)

    def __getitem__(self, i: int) -> dict:
        return {
            "fbank": self.fbank[i],
            "image": self.image[i],
            "label": torch.from_numpy(self.labels_matrix[i]),
            "index": i,
        }


_COMMON = dict(epochs=2, log_every=1, save_every=0, progress=False, seed=3)


def _det_cfg(out: Path) -> PretrainConfig:
    """Deterministic pretraining (no masking, contrastive only): must equal a 1-process run."""
    return build_config(
        PretrainConfig,
        "tiny_smoke",
        {
            **_COMMON,
            "out_dir": str(out),
            "mask_ratio_a": 0.0,
            "mask_ratio_v": 0.0,
            "mae_loss_weight": 0.0,
            "contrast_loss_weight": 1.0,
            "schedule": "constant",
            "eps": 1e-6,
        },
    )


def _configs(root: Path) -> dict[str, object]:
    common = _COMMON
    return {
        # the official objective with global negatives
        "pt": build_config(PretrainConfig, "tiny_smoke", {**common, "out_dir": str(root / "pt")}),
        "det": _det_cfg(root / "det"),
        "ft": build_config(
            FinetuneConfig,
            "tiny_smoke_ft",
            {**common, "out_dir": str(root / "ft"), "wa_start": 1, "wa_end": 2},
        ),
    }


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    try:
        cfgs = _configs(Path(root))
        for name in ("pt", "det"):
            res = pretrain.train(cfgs[name], env, RandomAV(32), RandomAV(8, seed=1))
            torch.save(res.model.state_dict(), Path(root) / f"{name}_rank{rank}.pt")
        res = finetune.train(cfgs["ft"], env, RandomAV(32), RandomAV(10, seed=2))
        torch.save(res.model.state_dict(), Path(root) / f"ft_rank{rank}.pt")
    finally:
        cleanup_distributed(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_gloo_run(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    for name in ("pt", "det", "ft"):
        r0 = torch.load(tmp_path / f"{name}_rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{name}_rank1.pt", weights_only=True)
        assert _same(r0, r1), f"{name}: ranks disagree on the final weights"
        assert read_run(tmp_path / name).status == "finished"
        saved = load_state_dict_file(tmp_path / name / "model.safetensors")
        assert _same(saved, r0)

    # rank 0 alone writes metrics: one record per optimizer step (32 clips / global batch 8)
    steps = read_metrics(tmp_path / "pt", type="step")
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert [r["epoch"] for r in read_metrics(tmp_path / "pt", type="epoch")] == [1, 2]
    # gathered negatives: each video is contrasted with 2 x 4 local clips
    assert all(r["contrast_candidates"] == 8 for r in steps)

    # global negatives with exact gradients: the 2-process run equals one process on the
    # same global batches (DistributedSampler splits each global batch of 8 across the ranks)
    torch.set_num_threads(1)
    ref_cfg = _configs(tmp_path / "ref")["det"]  # out_dir ref/det
    ref = pretrain.train(ref_cfg, DistEnv(), RandomAV(32), RandomAV(8, seed=1)).model.state_dict()
    det = torch.load(tmp_path / "det_rank0.pt", weights_only=True)
    losses = [r["loss"] for r in read_metrics(tmp_path / "det", type="step")]
    ref_losses = [r["loss"] for r in read_metrics(tmp_path / "ref" / "det", type="step")]
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for k in ref:
        a, b = det[k], ref[k]
        if k.endswith("attn.qkv.bias"):
            # The key bias has an exactly-zero gradient (softmax is shift-invariant), which
            # Adam turns from float noise into random steps: it does not affect the function.
            keep = torch.ones_like(a, dtype=torch.bool)
            keep[a.numel() // 3 : 2 * a.numel() // 3] = False
            a, b = a[keep], b[keep]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert not _same(det, torch.load(tmp_path / "pt_rank0.pt", weights_only=True))

    # fine-tuning: the 10 validation clips are padded to 12 by the sampler and deduplicated
    final = read_metrics(tmp_path / "ft", type="final")[-1]
    assert final["final_num_samples"] == 10 and final["wa_models"] == 2
    assert [r["val_num_samples"] for r in read_metrics(tmp_path / "ft", type="epoch")] == [10, 10]


# --- sharded data (issue 12): the same loss curve as one process, every sample once ---------


class _GlobalBatches(IterableDataset):
    """One process's stand-in for two ranks: per epoch, rank 0's batch m then rank 1's batch m.

    The ranks' streams are read from :class:`ShardedDataset` exactly as each rank reads them,
    so a one-process run on batches of ``2 x micro`` sees the 2-process job's global batches.
    """

    def __init__(self, spec: Path, micro: int, seed: int) -> None:
        self.ranks = [
            ShardedDataset(spec, train=True, seed=seed, num_replicas=2, rank=r, batch_size=micro)
            for r in range(2)
        ]
        self.micro = micro
        self.feature_config = self.ranks[0].feature_config
        self.epoch = 0
        self.order: list[list[int]] = []  # clip indices per epoch, in global-batch order

    def set_batch_size(self, batch_size: int) -> None:
        assert batch_size == 2 * self.micro

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self, consumed: int = 0) -> dict:
        return {"epoch": self.epoch, "consumed": consumed}

    def load_state_dict(self, state: dict) -> None:
        raise AssertionError("this reference run never resumes")

    def __len__(self) -> int:
        return 2 * len(self.ranks[0])

    def __iter__(self):
        streams = []
        for ds in self.ranks:
            ds.set_epoch(self.epoch)
            streams.append(list(ds))
        m = self.micro
        items = [
            s
            for b in range(len(streams[0]) // m)
            for r in (0, 1)
            for s in streams[r][b * m : (b + 1) * m]
        ]
        self.order.append([int(s["index"]) for s in items])
        yield from items


def _shard_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    try:
        train_set = ShardedDataset(Path(root) / "sh", train=True, seed=5)
        seen: list[list[int]] = []
        for epoch in range(2):  # what each rank streams, epoch by epoch (as the trainer does)
            train_set.set_batch_size(4)
            train_set.set_epoch(epoch)
            seen.append([int(s["index"]) for s in train_set])
        torch.save(torch.tensor(seen), Path(root) / f"seen_rank{rank}.pt")
        res = pretrain.train(_det_cfg(Path(root) / "shdet"), env, train_set)
        torch.save(res.model.state_dict(), Path(root) / f"shdet_rank{rank}.pt")
    finally:
        cleanup_distributed(env)


def test_two_process_gloo_run_on_shards(tmp_path: Path) -> None:
    from training.data import prepare_synthetic
    from training.synthetic import AVShapesConfig

    syn = AVShapesConfig(num_classes=4, duration_s=0.7, fps=15, size=32, mix_prob=0.3)
    prepare_synthetic(
        tmp_path / "sh",
        32,
        seed=0,
        cfg=syn,
        workers=0,
        feature_config=FeatureConfig.for_model(cavmae_tiny()),
        output="shards",
        shard_bytes=20_000,  # several shards: they split across the ranks
    )
    assert len(list((tmp_path / "sh").glob("shard-*.tar"))) >= 4
    torch.multiprocessing.spawn(
        _shard_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
    )

    # every sample exactly once per epoch across the two ranks, another order each epoch
    seen = [torch.load(tmp_path / f"seen_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for epoch in range(2):
        assert sorted(seen[0][epoch].tolist() + seen[1][epoch].tolist()) == list(range(32))
    assert seen[0][0].tolist() != seen[0][1].tolist()

    r0 = torch.load(tmp_path / "shdet_rank0.pt", weights_only=True)
    assert _same(r0, torch.load(tmp_path / "shdet_rank1.pt", weights_only=True))
    epochs = read_metrics(tmp_path / "shdet", type="epoch")
    assert [r["data_bad_shards"] for r in epochs] == [0, 0]
    assert [r["data_replaced_samples"] for r in epochs] == [0, 0]

    # one process on the same global batches: the same loss curve
    torch.set_num_threads(1)
    ref_set = _GlobalBatches(tmp_path / "sh", micro=4, seed=5)
    pretrain.train(_det_cfg(tmp_path / "ref_shdet"), DistEnv(), ref_set)
    for epoch in range(2):  # and the reference saw what the ranks saw, batch by batch
        got = ref_set.order[epoch]
        want = [
            i
            for b in range(4)
            for r in (0, 1)
            for i in seen[r][epoch][b * 4 : (b + 1) * 4].tolist()
        ]
        assert got == want
    losses = [r["loss"] for r in read_metrics(tmp_path / "shdet", type="step")]
    ref_losses = [r["loss"] for r in read_metrics(tmp_path / "ref_shdet", type="step")]
    assert len(losses) == 8
    assert losses == pytest.approx(ref_losses, rel=1e-5)
