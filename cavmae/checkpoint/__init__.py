"""Checkpoint I/O: load official ``.pth`` files and our safetensors format, strictly.

Everything that reads or writes model weights goes through this package (STYLE.md rule 15):

- :mod:`~cavmae.checkpoint.keys`: one place that normalises keys (the DataParallel/DDP
  ``module.`` prefix, the ``torch.compile`` ``_orig_mod.`` segment, as in nanoGPT) and
  unwraps models before saving.
- :mod:`~cavmae.checkpoint.reading`: ``torch.load(..., weights_only=True,
  map_location="cpu")`` for PyTorch files (never full unpickling), ``safetensors`` for ours,
  and clear errors for anything that is not a checkpoint.
- :mod:`~cavmae.checkpoint.infer`: the architecture from tensor shapes; what the tensors do
  not determine (``num_heads``, ``decoder_num_heads``, ``norm_pix_loss``, ``tr_pos``) comes
  from overrides, then metadata, then the official defaults.
- :mod:`~cavmae.checkpoint.loading`: strict loading into ``CAVMAE``/``CAVMAEFT``. The one
  sanctioned mismatch is the official fine-tuning start (OFFICIAL_CAVMAE.md §3.2): a
  pretrained model loaded into a classifier drops exactly the decoder-side tensors and leaves
  exactly the four ``mlp_head`` tensors freshly initialised, both sets asserted.
- :mod:`~cavmae.checkpoint.saving`: our format, one ``.safetensors`` file whose header
  metadata holds a JSON document under ``"cavmae"``, written atomically.

Official checkpoints are plain DataParallel state_dicts (OFFICIAL_CAVMAE.md §3.1, §9.1).
"""

from cavmae.checkpoint.infer import infer_config
from cavmae.checkpoint.keys import HEAD_KEYS, normalise_keys, unwrap
from cavmae.checkpoint.loading import LoadedCheckpoint, load_checkpoint, load_model
from cavmae.checkpoint.reading import FORMAT_VERSION, METADATA_KEY, read_checkpoint
from cavmae.checkpoint.saving import convert_checkpoint, save_model

__all__ = [
    "FORMAT_VERSION",
    "HEAD_KEYS",
    "METADATA_KEY",
    "LoadedCheckpoint",
    "convert_checkpoint",
    "infer_config",
    "load_checkpoint",
    "load_model",
    "normalise_keys",
    "read_checkpoint",
    "save_model",
    "unwrap",
]
