"""Patchify/unpatchify round trips and the audio orientation (OFFICIAL_CAVMAE.md §1.5, §2.4)."""

from __future__ import annotations

import torch

from cavmae.config import cavmae_base
from cavmae.models import CAVMAE
from cavmae.models.patchify import (
    fbank_to_patch_input,
    patch_input_to_fbank,
    patchify,
    patchify_audio,
    unpatchify,
    unpatchify_audio,
)


def test_round_trip_audio_geometry() -> None:
    cfg = cavmae_base()
    f, t = cfg.audio_grid
    p = cfg.patch_size
    fbank = torch.randn(2, cfg.audio_length, cfg.num_mel_bins)  # (B, T, F)
    patches = patchify_audio(fbank, p)
    assert patches.shape == (2, cfg.num_audio_patches, p * p)
    assert torch.equal(unpatchify_audio(patches, (f, t), p), fbank)
    img = fbank_to_patch_input(fbank)
    assert img.shape == (2, 1, cfg.num_mel_bins, cfg.audio_length)
    assert torch.equal(patch_input_to_fbank(img), fbank)
    assert torch.equal(unpatchify(patchify(img, p), (f, t), p, 1), img)


def test_round_trip_visual_geometry() -> None:
    cfg = cavmae_base()
    p = cfg.patch_size
    imgs = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    patches = patchify(imgs, p)
    assert patches.shape == (2, cfg.num_visual_patches, p * p * 3)
    assert torch.equal(unpatchify(patches, cfg.visual_grid, p, 3), imgs)


def test_orientation_token_197() -> None:
    """A patch at time index 5, frequency index 3 is token 3 * 64 + 5 = 197."""
    cfg = cavmae_base()
    p = cfg.patch_size
    f_p, t_p = cfg.audio_grid
    fbank = torch.zeros(1, cfg.audio_length, cfg.num_mel_bins)
    fbank[0, 5 * p : 6 * p, 3 * p : 4 * p] = 1.0  # time patch 5, frequency patch 3
    patches = patchify_audio(fbank, p)[0]  # (L_a, P_a)
    hot = patches.abs().sum(-1).nonzero().flatten().tolist()
    assert hot == [3 * t_p + 5] == [197]
    # Within the patch: element = freq_offset * p + time_offset.
    fbank2 = torch.zeros_like(fbank)
    fbank2[0, 5 * p + 2, 3 * p + 7] = 1.0  # time offset 2, freq offset 7
    assert patchify_audio(fbank2, p)[0, 197].nonzero().flatten().tolist() == [7 * p + 2]
    # The model's patch embedding produces the same token order.
    with torch.no_grad():
        model = CAVMAE(
            embed_dim=64,
            modality_specific_depth=1,
            num_heads=4,
            decoder_depth=1,
            decoder_embed_dim=32,
            decoder_num_heads=4,
        )
        model.patch_embed_a.proj.bias.zero_()
        tok = model.patch_embed_a(fbank_to_patch_input(fbank))[0]  # (L_a, D)
    assert tok.abs().sum(-1).nonzero().flatten().tolist() == [197]
    assert f_p * t_p == 512


def test_image_patch_channel_last() -> None:
    imgs = torch.zeros(1, 3, 32, 32)
    imgs[0, 2, 16 + 1, 3] = 1.0  # channel 2, patch row 1 col 0, offsets (1, 3)
    patches = patchify(imgs, 16)
    assert patches[0].abs().sum(-1).nonzero().flatten().tolist() == [2]
    assert patches[0, 2].nonzero().flatten().tolist() == [(1 * 16 + 3) * 3 + 2]


def test_official_signature_methods() -> None:
    with torch.device("meta"):
        model = CAVMAE()
    x = torch.randn(2, 1, 128, 1024)
    assert torch.equal(model.unpatchify(model.patchify(x, 1, 8, 64, 16), 1, 8, 64, 16), x)
