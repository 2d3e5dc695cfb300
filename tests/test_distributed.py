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
from torch.utils.data import Dataset

from cavmae.config import FeatureConfig, cavmae_tiny
from training import finetune, pretrain
from training.checkpointing import load_state_dict_file
from training.config import FinetuneConfig, PretrainConfig, build_config
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


def _configs(root: Path) -> dict[str, object]:
    common = dict(epochs=2, log_every=1, save_every=0, progress=False, seed=3)
    return {
        # the official objective with global negatives
        "pt": build_config(PretrainConfig, "tiny_smoke", {**common, "out_dir": str(root / "pt")}),
        # deterministic (no masking, contrastive only): must equal a 1-process run
        "det": build_config(
            PretrainConfig,
            "tiny_smoke",
            {
                **common,
                "out_dir": str(root / "det"),
                "mask_ratio_a": 0.0,
                "mask_ratio_v": 0.0,
                "mae_loss_weight": 0.0,
                "contrast_loss_weight": 1.0,
                "schedule": "constant",
                "eps": 1e-6,
            },
        ),
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
