"""CAVMAE: the contrastive audio-visual masked autoencoder used for pretraining.

Paper: Gong et al., "Contrastive Audio-Visual Masked Autoencoder", ICLR 2023.
Reference implementation: ``CAVMAE`` in ``src/models/cav_mae.py`` (github.com/YuanGongND/cav-mae).
Spec: OFFICIAL_CAVMAE.md §1.2 (parameters), §2.1-2.7 (forward paths).

State_dict keys, order and shapes equal the official ones (without ``module.``) for any
configuration. Deliberate differences, all compatible with the official weights and outputs:

* the shared blocks are chained in the contrastive branch (official bug at depth > 1, §2.2);
* structured audio masking uses the config's grid and a torch RNG instead of Python's
  ``random.sample`` with a hard-coded 8 x 64 grid;
* a mask ratio of 1.0 on one modality is supported: that modality is then reconstructed from
  the other alone and the contrastive term is skipped (loss_c = c_acc = 0);
* the MAE loss of a modality with no removed patch (ratio 0) is 0 instead of 0/0 = NaN;
* an optional ``contrast_gather`` widens the contrastive negatives across processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cavmae.config import ModelConfig
from cavmae.errors import ConfigError
from cavmae.models import patchify as P
from cavmae.models.backbone import CAVMAEBackbone
from cavmae.models.layers import AttnImpl, Block
from cavmae.models.losses import ContrastGather, contrastive_loss, mae_loss
from cavmae.models.masking import (
    MASK_MODES,
    STRUCTURED_MODES,
    MaskMode,
    MaskResult,
    random_masking,
    structured_masking,
)
from cavmae.models.outputs import EncoderOutput, InpaintOutput, PretrainOutput

__all__ = ["CAVMAE", "PretrainOutput", "EncoderOutput", "InpaintOutput"]


class CAVMAE(CAVMAEBackbone):
    """Pretraining model: encoder, joint decoder, MAE and contrastive losses.

    Positional arguments and defaults are the official ones (OFFICIAL_CAVMAE.md §1.2).

    Args:
        img_size: image side.
        audio_length: fbank frames T.
        patch_size: p, both modalities.
        in_chans: image channels.
        embed_dim: encoder width D.
        modality_specific_depth: depth of ``blocks_a`` and ``blocks_v``.
        num_heads: encoder heads.
        decoder_embed_dim: decoder width D_dec.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder heads.
        mlp_ratio: MLP hidden width / D.
        norm_layer: LayerNorm factory (eps 1e-5).
        norm_pix_loss: standardise target patches in the MAE loss.
        tr_pos: make the four sin-cos tables trainable.
        num_mel_bins: fbank bins F (official 128).
        shared_depth: depth of ``blocks_u`` (None: 12 - modality_specific_depth).
        attn_impl: "sdpa" or "eager".

    Raises:
        ConfigError: for an inconsistent geometry.
    """

    def __init__(
        self,
        img_size: int = 224,
        audio_length: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        modality_specific_depth: int = 11,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        norm_pix_loss: bool = False,
        tr_pos: bool = False,
        *,
        num_mel_bins: int = 128,
        shared_depth: int | None = None,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        config = ModelConfig(
            img_size=img_size,
            audio_length=audio_length,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            modality_specific_depth=modality_specific_depth,
            num_heads=num_heads,
            decoder_embed_dim=decoder_embed_dim,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            norm_pix_loss=norm_pix_loss,
            tr_pos=tr_pos,
            num_mel_bins=num_mel_bins,
            shared_depth=shared_depth,
            label_dim=None,
        )
        # ---------------------------------------------------------------- encoder
        super().__init__(config, norm_layer, attn_impl)
        self.norm_pix_loss = norm_pix_loss
        # ---------------------------------------------------------------- decoder
        Dd = decoder_embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, Dd))
        # Parity: frozen tables stay nn.Parameter (not buffers) so the official keys match.
        self.decoder_pos_embed_a = nn.Parameter(
            torch.zeros(1, config.num_audio_patches, Dd), requires_grad=tr_pos
        )
        self.decoder_pos_embed_v = nn.Parameter(
            torch.zeros(1, config.num_visual_patches, Dd), requires_grad=tr_pos
        )
        self.decoder_embed = nn.Linear(embed_dim, Dd)
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, decoder_num_heads, mlp_ratio, norm_layer, attn_impl)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(Dd)
        p = patch_size
        self.decoder_pred_a = nn.Linear(Dd, p * p * 1)
        self.decoder_pred_v = nn.Linear(Dd, p * p * in_chans)
        self.initialize_weights()

    @classmethod
    def from_config(cls, cfg: ModelConfig, **kw: Any) -> CAVMAE:
        """Build from a :class:`ModelConfig`; ``kw`` overrides fields or adds ``norm_layer`` /
        ``attn_impl``.

        Raises:
            ConfigError: if the config describes a classifier (``label_dim`` set).
        """
        args = cfg.to_dict()
        args.update(kw)
        if args.pop("label_dim") is not None:
            raise ConfigError("config has label_dim set (a classifier); build CAVMAEFT instead")
        return cls(**args)

    # ------------------------------------------------------------------ init / helpers
    def _sincos_tables(self) -> list[tuple[nn.Parameter, tuple[int, int]]]:
        c = self.config
        return super()._sincos_tables() + [
            (self.decoder_pos_embed_a, c.audio_grid),
            (self.decoder_pos_embed_v, c.visual_grid),
        ]

    def _token_parameters(self) -> list[nn.Parameter]:
        return super()._token_parameters() + [
            self.decoder_modality_a,
            self.decoder_modality_v,
            self.mask_token,
        ]

    def no_weight_decay(self) -> set[str]:
        """Token and positional parameter names, decoder ones included."""
        return super().no_weight_decay() | {
            "mask_token",
            "decoder_modality_a",
            "decoder_modality_v",
            "decoder_pos_embed_a",
            "decoder_pos_embed_v",
        }

    def unused_parameter_names(self, mae: bool = True, contrastive: bool = True) -> set[str]:
        """Parameters that :meth:`forward` never touches (they get no gradient by design).

        Always: the ``_a``/``_v`` LayerNorms of ``blocks_a``, ``blocks_v`` and
        ``decoder_blocks``. Without the contrastive term also the ``_a``/``_v`` norms of
        ``blocks_u`` and ``norm_a``/``norm_v``; without the MAE term the whole decoder.

        Args:
            mae: whether the MAE term is on (``mae_loss_weight != 0``).
            contrastive: whether the contrastive term is on.
        """
        streams = {"joint", "audio", "visual"} if contrastive else {"joint"}
        unused = self._unused_backbone_names({"a", "v"}, streams)
        side = ("norm1_a", "norm1_v", "norm2_a", "norm2_v")
        for name, _ in self.named_parameters():
            parts = name.split(".")
            if not name.startswith(("decoder_", "mask_token")):
                continue
            if not mae or (parts[0] == "decoder_blocks" and parts[2] in side):
                unused.add(name)
        return unused

    def patchify(self, imgs: torch.Tensor, c: int, h: int, w: int, p: int = 16) -> torch.Tensor:
        """Official-signature patchify: (B, c, h*p, w*p) -> (B, h*w, p*p*c).

        Raises:
            ValueError: if the input does not have an (h, w) grid of p-sized patches.
        """
        if tuple(imgs.shape[1:]) != (c, h * p, w * p):
            raise ValueError(
                f"patchify: got {tuple(imgs.shape)}, expected (B, {c}, {h * p}, {w * p})"
            )
        return P.patchify(imgs, p)

    def unpatchify(self, x: torch.Tensor, c: int, h: int, w: int, p: int = 16) -> torch.Tensor:
        """Official-signature unpatchify: (B, h*w, p*p*c) -> (B, c, h*p, w*p)."""
        return P.unpatchify(x, (h, w), p, c)

    def _mask_audio(
        self,
        a: torch.Tensor,
        ratio: float,
        mask_mode: str,
        noise: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> MaskResult:
        """Mask the (B, L_a, D) audio tokens in ``mask_mode``."""
        if mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask_mode {mask_mode!r}; choose one of {MASK_MODES}")
        if mask_mode in STRUCTURED_MODES:
            if noise is not None:
                raise ValueError(
                    "noise_a cannot be combined with a structured mask_mode; build it with "
                    "masking.structured_noise and pass mask_mode='unstructured'"
                )
            return structured_masking(a, ratio, self.config.audio_grid, mask_mode, generator)
        return random_masking(a, ratio, noise=noise, generator=generator)

    # ------------------------------------------------------------------ stages
    def forward_encoder(
        self,
        a: torch.Tensor,
        v: torch.Tensor,
        mask_ratio_a: float,
        mask_ratio_v: float,
        mask_mode: MaskMode = "unstructured",
        *,
        noise_a: torch.Tensor | None = None,
        noise_v: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """Embed, mask and encode both modalities (OFFICIAL_CAVMAE.md §2.2).

        Args:
            a: (B, T, F) fbank.
            v: (B, C, H, W) image.
            mask_ratio_a: audio mask ratio; ``int(L_a * (1 - r))`` tokens are kept.
            mask_ratio_v: visual mask ratio (always unstructured).
            mask_mode: audio masking: 'unstructured', 'time', 'freq' or 'tf'.
            noise_a: optional (B, L_a) sorting noise (unstructured mode only).
            noise_v: optional (B, L_v) sorting noise.
            generator: RNG for noise that is not given (audio is drawn first).

        Returns:
            EncoderOutput(x, mask_a, ids_restore_a, mask_v, ids_restore_v, ca, cv).

        Raises:
            ValueError: if both ratios are 1.0, or for bad modes, ratios or noise shapes.
        """
        if mask_ratio_a >= 1.0 and mask_ratio_v >= 1.0:
            raise ValueError("mask_ratio_a and mask_ratio_v cannot both be 1.0: no token is left")
        a = self.embed_audio(a)  # (B, L_a, D)
        v = self.embed_visual(v)  # (B, L_v, D)
        # Parity: embeddings added before masking; audio masked first (OFFICIAL_CAVMAE.md §2.2).
        ma = self._mask_audio(a, mask_ratio_a, mask_mode, noise_a, generator)
        mv = random_masking(v, mask_ratio_v, noise=noise_v, generator=generator)
        a = self.encode_modality(ma.kept, self.blocks_a)  # (B, K_a, D)
        v = self.encode_modality(mv.kept, self.blocks_v)  # (B, K_v, D)
        x = self.encode_shared(torch.cat([a, v], dim=1), "joint")  # (B, K_a + K_v, D)
        ca = self.encode_shared(a, "audio")  # (B, K_a, D)
        cv = self.encode_shared(v, "visual")  # (B, K_v, D)
        return EncoderOutput(x, ma.mask, ma.ids_restore, mv.mask, mv.ids_restore, ca, cv)

    def forward_decoder(
        self,
        x: torch.Tensor,
        mask_a: torch.Tensor,
        ids_restore_a: torch.Tensor,
        mask_v: torch.Tensor,
        ids_restore_v: torch.Tensor,
        *,
        num_kept_a: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct every patch of both modalities (OFFICIAL_CAVMAE.md §2.3).

        Args:
            x: (B, K_a + K_v, D) joint encoder output.
            mask_a: (B, L_a) audio mask (1 = removed).
            ids_restore_a: (B, L_a).
            mask_v: (B, L_v) visual mask (unused: the count follows from the shapes).
            ids_restore_v: (B, L_v).
            num_kept_a: K_a; when None it is read from ``mask_a[0]`` as the official code does
                (a data-dependent value that ``torch.compile`` cannot trace).

        Returns:
            (pred_a (B, L_a, p*p), pred_v (B, L_v, p*p*C)) in original token order.
        """
        del mask_v  # the visual count is N - K_a
        c = self.config
        L_a, L_v = c.num_audio_patches, c.num_visual_patches
        if num_kept_a is None:
            # Parity: masked count read from sample 0 (OFFICIAL_CAVMAE.md §2.3).
            num_kept_a = L_a - int(mask_a[0].sum())
        x = self.decoder_embed(x)  # (B, K_a + K_v, D_dec)
        B, N, Dd = x.shape
        K_a, K_v = num_kept_a, N - num_kept_a
        tokens_a = torch.cat([x[:, :K_a], self.mask_token.expand(B, L_a - K_a, Dd)], dim=1)
        tokens_a = torch.gather(tokens_a, 1, ids_restore_a.unsqueeze(-1).expand(-1, -1, Dd))
        tokens_v = torch.cat([x[:, K_a:], self.mask_token.expand(B, L_v - K_v, Dd)], dim=1)
        tokens_v = torch.gather(tokens_v, 1, ids_restore_v.unsqueeze(-1).expand(-1, -1, Dd))
        # Parity: positional table first, then the decoder modality token (§2.3 step 5).
        tokens_a = tokens_a + self.decoder_pos_embed_a + self.decoder_modality_a  # (B, L_a, D_dec)
        tokens_v = tokens_v + self.decoder_pos_embed_v + self.decoder_modality_v  # (B, L_v, D_dec)
        x = torch.cat([tokens_a, tokens_v], dim=1)  # (B, L_a + L_v, D_dec)
        for blk in self.decoder_blocks:
            x = blk(x)  # (B, L_a + L_v, D_dec)
        x = self.decoder_norm(x)
        return self.decoder_pred_a(x[:, :L_a]), self.decoder_pred_v(x[:, L_a:])

    def forward_mae_loss(
        self, input: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, modality: str
    ) -> torch.Tensor:
        """MAE loss of one modality over its removed patches (OFFICIAL_CAVMAE.md §2.4).

        Args:
            input: (B, T, F) fbank for 'a', (B, C, H, W) image for 'v'.
            pred: (B, L, P) decoder prediction.
            mask: (B, L), 1 = removed.
            modality: 'a' or 'v'.

        Returns:
            Scalar loss (standardised targets when ``norm_pix_loss``).

        Raises:
            ValueError: for an unknown modality.
        """
        p = self.config.patch_size
        if modality == "a":
            target = P.patchify_audio(input, p)  # (B, L_a, P_a)
        elif modality == "v":
            target = P.patchify(input, p)  # (B, L_v, P_v)
        else:
            raise ValueError(f"unknown modality {modality!r}; use 'a' or 'v'")
        return mae_loss(target, pred, mask, self.norm_pix_loss)

    def forward_contrastive(
        self,
        audio_rep: torch.Tensor,
        video_rep: torch.Tensor,
        bidirect_contrast: bool = False,
        *,
        gather: ContrastGather | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted InfoNCE of (B, D) pooled reps: (nce, c_acc); see
        :func:`cavmae.models.losses.contrastive_loss`."""
        return contrastive_loss(audio_rep, video_rep, bidirect_contrast, gather)

    # ------------------------------------------------------------------ entry points
    def forward(
        self,
        audio: torch.Tensor,
        imgs: torch.Tensor,
        mask_ratio_a: float = 0.75,
        mask_ratio_v: float = 0.75,
        mae_loss_weight: float = 1.0,
        contrast_loss_weight: float = 0.01,
        mask_mode: MaskMode = "unstructured",
        *,
        noise_a: torch.Tensor | None = None,
        noise_v: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        bidirect_contrast: bool = False,
        contrast_gather: ContrastGather | None = None,
        return_encoder: bool = False,
    ) -> PretrainOutput | tuple[PretrainOutput, EncoderOutput]:
        """Pretraining step: MAE + contrastive loss (OFFICIAL_CAVMAE.md §2.6).

        Args:
            audio: (B, T, F) fbank.
            imgs: (B, C, H, W) image.
            mask_ratio_a: audio mask ratio.
            mask_ratio_v: visual mask ratio.
            mae_loss_weight: weight of (loss_mae_a + loss_mae_v); 0 skips the decoder.
            contrast_loss_weight: weight of the InfoNCE term; 0 skips it.
            mask_mode: audio masking mode.
            noise_a: optional (B, L_a) audio sorting noise.
            noise_v: optional (B, L_v) visual sorting noise.
            generator: RNG for the masks.
            bidirect_contrast: average video->audio and audio->video InfoNCE.
            contrast_gather: optional callable ``local (B, D) -> (global (B_total, D), offset)``
                with autograd, e.g. a torch.distributed all-gather; the local positives sit at
                rows ``offset + i`` (``rank * B``). See :data:`cavmae.models.losses.ContrastGather`.
            return_encoder: also return the :class:`EncoderOutput` of the step, so that a
                training objective can add terms on the same tokens (through this call, which
                DDP needs to see).

        Returns:
            PretrainOutput(loss, loss_mae, loss_mae_a, loss_mae_v, loss_c, mask_a, mask_v,
            c_acc) (the official order), or ``(PretrainOutput, EncoderOutput)`` with
            ``return_encoder``. When a modality has no visible token (ratio 1.0) the
            contrastive term is skipped: loss_c and c_acc are 0.
        """
        enc = self.forward_encoder(
            audio,
            imgs,
            mask_ratio_a,
            mask_ratio_v,
            mask_mode,
            noise_a=noise_a,
            noise_v=noise_v,
            generator=generator,
        )
        zero = torch.zeros((), device=audio.device)
        if mae_loss_weight != 0:
            pred_a, pred_v = self.forward_decoder(
                enc.x,
                enc.mask_a,
                enc.ids_restore_a,
                enc.mask_v,
                enc.ids_restore_v,
                num_kept_a=enc.ca.shape[1],
            )
            loss_mae_a = self.forward_mae_loss(audio, pred_a, enc.mask_a, "a")
            loss_mae_v = self.forward_mae_loss(imgs, pred_v, enc.mask_v, "v")
            loss_mae = mae_loss_weight * (loss_mae_a + loss_mae_v)
        else:
            loss_mae_a, loss_mae_v, loss_mae = zero, zero, zero
        if contrast_loss_weight != 0 and enc.ca.shape[1] > 0 and enc.cv.shape[1] > 0:
            # float32 pooling: a bfloat16 mean keeps too few digits for the contrastive logits.
            loss_c, c_acc = self.forward_contrastive(
                enc.ca.float().mean(dim=1),
                enc.cv.float().mean(dim=1),
                bidirect_contrast,
                gather=contrast_gather,
            )
            # Parity: the returned loss_c is already weighted (OFFICIAL_CAVMAE.md §2.6).
            loss_c = contrast_loss_weight * loss_c
        else:
            loss_c, c_acc = zero, zero
        loss = loss_mae + loss_c
        out = PretrainOutput(
            loss, loss_mae, loss_mae_a, loss_mae_v, loss_c, enc.mask_a, enc.mask_v, c_acc
        )
        return (out, enc) if return_encoder else out

    def forward_inpaint(
        self,
        audio: torch.Tensor,
        imgs: torch.Tensor,
        mask_ratio_a: float = 0.75,
        mask_ratio_v: float = 0.75,
        mask_mode: MaskMode = "unstructured",
        *,
        noise_a: torch.Tensor | None = None,
        noise_v: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> InpaintOutput:
        """Mask, encode, decode: reconstructions and per-modality MAE losses (§2.7).

        A ratio of 1.0 on one modality reconstructs it from the other modality alone (its
        decoder input is mask tokens only). To mask a chosen set of patches, pass
        ``noise``/ratio from :func:`cavmae.models.masking.noise_from_patch_mask`.

        Args:
            audio: (B, T, F) fbank.
            imgs: (B, C, H, W) image.
            mask_ratio_a: audio mask ratio.
            mask_ratio_v: visual mask ratio.
            mask_mode: audio masking mode.
            noise_a: optional (B, L_a) audio sorting noise.
            noise_v: optional (B, L_v) visual sorting noise.
            generator: RNG for the masks.

        Returns:
            InpaintOutput(pred_a (B, L_a, P_a), pred_v (B, L_v, P_v), mask_a, mask_v, loss_a,
            loss_v); use :func:`cavmae.models.patchify.unpatchify_audio` / ``unpatchify`` to
            get spectrograms and images back.
        """
        enc = self.forward_encoder(
            audio,
            imgs,
            mask_ratio_a,
            mask_ratio_v,
            mask_mode,
            noise_a=noise_a,
            noise_v=noise_v,
            generator=generator,
        )
        pred_a, pred_v = self.forward_decoder(
            enc.x,
            enc.mask_a,
            enc.ids_restore_a,
            enc.mask_v,
            enc.ids_restore_v,
            num_kept_a=enc.ca.shape[1],
        )
        loss_a = self.forward_mae_loss(audio, pred_a, enc.mask_a, "a")
        loss_v = self.forward_mae_loss(imgs, pred_v, enc.mask_v, "v")
        return InpaintOutput(pred_a, pred_v, enc.mask_a, enc.mask_v, loss_a, loss_v)
