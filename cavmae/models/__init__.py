"""CAV-MAE models, exactly compatible with the official checkpoints.

Paper: Gong et al., "Contrastive Audio-Visual Masked Autoencoder", ICLR 2023.
Reference implementation: github.com/YuanGongND/cav-mae (``src/models/cav_mae.py``).
Spec: /work/shared/reference/OFFICIAL_CAVMAE.md (sections cited as §N in the code).

Shape glossary (full-size values in brackets):

* ``B`` batch; ``T`` fbank frames [1024]; ``F`` mel bins [128]; ``p`` patch size [16];
* ``F_p, T_p`` audio token grid F/p x T/p [8 x 64], flattened frequency-major
  (token = f * T_p + t);
* ``L_a`` audio tokens [512]; ``L_v`` visual tokens [196] on a 14 x 14 grid;
* ``K_a``, ``K_v`` kept tokens after masking (``int(L * (1 - ratio))``);
* ``D`` encoder width [768]; ``D_dec`` decoder width [512]; ``h`` heads;
* ``P_a`` = p*p values per audio patch [256]; ``P_v`` = p*p*3 per image patch [768];
* ``C`` classes.

Inputs: audio is the normalised fbank ``(B, T, F)``; images are ImageNet-normalised
``(B, 3, H, W)``.
"""

from cavmae.models.backbone import STREAMS, CAVMAEBackbone, Stream
from cavmae.models.cavmae import CAVMAE, EncoderOutput, InpaintOutput, PretrainOutput
from cavmae.models.cavmae_ft import CAVMAEFT, FT_MODES, FeatMode, FTMode
from cavmae.models.factory import build_model
from cavmae.models.layers import ATTN_IMPLS, Attention, AttnImpl, Block
from cavmae.models.losses import ContrastGather, contrastive_loss, mae_loss
from cavmae.models.masking import (
    MASK_MODES,
    MaskMode,
    MaskResult,
    noise_from_patch_mask,
    random_masking,
    structured_masking,
    structured_noise,
)
from cavmae.models.patchify import (
    fbank_to_patch_input,
    patchify,
    patchify_audio,
    unpatchify,
    unpatchify_audio,
)
from cavmae.models.pos_embed import sincos_2d

__all__ = [
    "ATTN_IMPLS",
    "Attention",
    "AttnImpl",
    "Block",
    "CAVMAE",
    "CAVMAEBackbone",
    "CAVMAEFT",
    "ContrastGather",
    "EncoderOutput",
    "FT_MODES",
    "FTMode",
    "FeatMode",
    "InpaintOutput",
    "MASK_MODES",
    "MaskMode",
    "MaskResult",
    "PretrainOutput",
    "STREAMS",
    "Stream",
    "build_model",
    "contrastive_loss",
    "fbank_to_patch_input",
    "mae_loss",
    "noise_from_patch_mask",
    "patchify",
    "patchify_audio",
    "random_masking",
    "sincos_2d",
    "structured_masking",
    "structured_noise",
    "unpatchify",
    "unpatchify_audio",
]
