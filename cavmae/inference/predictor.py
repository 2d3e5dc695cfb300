"""``Predictor``: the stateful engine between models and everything else (CLI, app, scripts).

Follows the shape of SAM's ``SamPredictor``: build it once from a checkpoint, ``prepare`` a
media file once (decode + features), then make cheap calls on the prepared clip:
``reconstruct``, ``embed``, ``classify``, ``patch_similarity``; and file-level calls that
stream long media in windows: ``classify_timeline``, ``temporal_similarity``.

A predictor holds up to two models: a pretraining ``CAVMAE`` (reconstruction, retrieval
embeddings, similarity; the official retrieval protocol uses the pretrained model,
OFFICIAL_CAVMAE.md §6.1) and a fine-tuned ``CAVMAEFT`` (classification). Either may be missing;
a call that needs the missing one raises :class:`~cavmae.errors.ConfigError` with a clear message.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cavmae import viz
from cavmae.accel import available_cores, inference_autocast, resolve_precision
from cavmae.config import FeatureConfig
from cavmae.errors import CavmaeError, ConfigError, NoAudioStream, NoVideoStream
from cavmae.inference.results import (
    Classification,
    ClassifyMode,
    MaskSpec,
    Prediction,
    Reconstruction,
    SimilarityMap,
    Timeline,
)
from cavmae.inference.sound_map import (
    SOUND_MAP_METHODS,
    SoundMapMethod,
    cosine_map,
    occlusion_map,
)

log = logging.getLogger(__name__)

__all__ = ["Predictor", "PreparedClip", "Progress"]

Progress = Callable[[float, str], None]

#: Label-set sizes of the official heads: AudioSet is multi-label, VGGSound single-label.
_OFFICIAL_MULTI_LABEL = {527: True, 309: False}


def _no_progress(_f: float, _msg: str) -> None:
    return None


@dataclass(frozen=True)
class PreparedClip:
    """A decoded, featurised clip (CPU tensors), ready for repeated model calls.

    ``fbank`` is None when the file has no audio, ``frames`` None when it has no video.
    """

    path: str
    fbank: torch.Tensor | None  # (T, F) normalised
    frames: torch.Tensor | None  # (K, 3, S, S) normalised
    frames_uint8: np.ndarray | None  # (K, S, S, 3)
    frame_times: np.ndarray  # (K,) seconds
    waveform: np.ndarray | None  # (N,) float32 at the feature sample rate
    duration_s: float

    @property
    def has_audio(self) -> bool:
        return self.fbank is not None

    @property
    def has_video(self) -> bool:
        return self.frames is not None

    @property
    def middle_index(self) -> int:
        """Index of the official evaluation frame (frame 5 of 10)."""
        k = 0 if self.frames is None else self.frames.shape[0]
        return k // 2


class Predictor:
    """Runs CAV-MAE models on media files.

    Args:
        pretrain: a loaded pretraining checkpoint (``cavmae.checkpoint.LoadedCheckpoint``) or None.
        classifier: a loaded fine-tuned checkpoint or None.
        device: "cpu", "cuda", "cuda:1", ... (default: CUDA when available).
        threads: CPU threads for torch (None leaves torch's default).
        precision: "auto" (bf16 autocast on CUDA, exact float32 on CPU), "float32" or
            "bfloat16". On CPU, bfloat16 casts the weights to bf16 and runs under bf16
            autocast: 3.3x faster on a CPU with AMX, ~2x with AVX512-BF16, probabilities
            within ~5e-3 of float32 (docs/PERFORMANCE.md); CPUs without bf16 instructions
            gain nothing. Outputs are float32 in every case.

    Raises:
        ConfigError: without a model, for mismatching feature settings or an unknown
            precision.
    """

    def __init__(
        self,
        pretrain: Any | None = None,
        classifier: Any | None = None,
        device: str | torch.device | None = None,
        threads: int | None = None,
        precision: str = "auto",
    ) -> None:
        if pretrain is None and classifier is None:
            raise ConfigError("a Predictor needs at least one model")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pretrain = pretrain
        self.classifier = classifier
        feats = [c.features for c in (pretrain, classifier) if c is not None]
        if len(feats) == 2 and feats[0] != feats[1]:
            raise ConfigError(
                "the pretraining and classification models use different feature settings: "
                f"{feats[0]} vs {feats[1]}"
            )
        self.features: FeatureConfig = feats[0]
        #: compute dtype: float32 or bfloat16 (see ``precision``)
        self.dtype: torch.dtype = resolve_precision(precision, self.device)
        # bf16 weights on CPU (AMX/AVX512-BF16 matmuls without a cast per call); CUDA keeps
        # float32 weights under bf16 autocast.
        weights = torch.bfloat16 if self.dtype == torch.bfloat16 and self.device.type == "cpu" else None
        for c in (pretrain, classifier):
            if c is not None:
                c.model.to(device=self.device, dtype=weights).eval()

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        model: str | Path = "demo",
        *,
        pretrain: str | Path | None = None,
        labels: str | Path | None = None,
        device: str | None = None,
        threads: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        precision: str = "auto",
        **overrides: Any,
    ) -> Predictor:
        """Builds a predictor from a zoo name, a bundled model name, a file or a run folder.

        Args:
            model: "demo" (bundled), a zoo name (``cavmae zoo list``), an official ``.pth``,
                our ``.safetensors``, or a training run directory (its ``model.safetensors``).
            pretrain: an optional second checkpoint (pretraining model) used for
                reconstruction and embeddings next to a classifier. For the bundled "demo" the
                companion "demo-pretrain" is loaded automatically.
            labels: a label CSV (``index,mid,display_name``) for a classifier without labels.
            device: torch device string.
            threads: CPU threads.
            progress: download progress callback (bytes done, total).
            precision: "auto", "float32" or "bfloat16" (see :class:`Predictor`).
            **overrides: architecture values that cannot be inferred from the tensors
                (num_heads, decoder_num_heads, norm_pix_loss, ...).

        Raises:
            CheckpointError, DownloadError, ConfigError: with a message for a person.
        """
        from cavmae import checkpoint, zoo

        specs = [model]
        if pretrain is not None:
            specs.append(pretrain)
        elif str(model) in zoo.BUNDLED and f"{model}-pretrain" in zoo.BUNDLED:
            specs.append(f"{model}-pretrain")
        loaded = []
        for spec in specs:
            loaded.append(
                checkpoint.load_checkpoint(
                    _resolve_spec(spec), labels=labels, progress=progress, **overrides
                )
            )
        pt = [c for c in loaded if c.kind == "pretrain"]
        ft = [c for c in loaded if c.kind == "finetune"]
        if len(pt) > 1 or len(ft) > 1:
            raise ConfigError("give at most one pretraining and one fine-tuned checkpoint")
        return cls(
            pt[0] if pt else None,
            ft[0] if ft else None,
            device=device,
            threads=threads,
            precision=precision,
        )

    # --- introspection -------------------------------------------------------------------
    @property
    def can_reconstruct(self) -> bool:
        return self.pretrain is not None

    @property
    def can_classify(self) -> bool:
        return self.classifier is not None

    @property
    def labels(self) -> list[str]:
        """Class names of the classifier (generic names when the checkpoint has none)."""
        if self.classifier is None:
            return []
        if self.classifier.labels is not None:
            return list(self.classifier.labels.names)
        return [f"class {i}" for i in range(self.classifier.config.label_dim)]

    @property
    def multi_label(self) -> bool:
        """True when the classifier's outputs are independent sigmoids (AudioSet-style)."""
        if self.classifier is None:
            return False
        if self.classifier.multi_label is not None:
            return bool(self.classifier.multi_label)
        return _OFFICIAL_MULTI_LABEL.get(self.classifier.config.label_dim, True)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary of the loaded models (for the CLI and the app)."""
        out: dict[str, Any] = {
            "device": str(self.device),
            "precision": str(self.dtype).removeprefix("torch."),
            "features": self.features.to_dict(),
        }
        for name, c in (("pretrain", self.pretrain), ("classifier", self.classifier)):
            if c is None:
                continue
            n_params = sum(p.numel() for p in c.model.parameters())
            out[name] = {
                "source": str(c.source) if getattr(c, "source", None) else None,
                "config": c.config.to_dict(),
                "parameters": n_params,
                "norm_pix_loss": c.config.norm_pix_loss,
                "mode": (c.meta or {}).get("mode"),
                "num_labels": len(c.labels.names) if c.labels is not None else c.config.label_dim,
                "meta": {k: v for k, v in (c.meta or {}).items() if k != "labels"},
            }
        return out

    # --- preparation -------------------------------------------------------------------
    def prepare(
        self,
        path: str | Path,
        progress: Progress | None = None,
        *,
        frames: Literal["official", "middle"] = "official",
    ) -> PreparedClip:
        """Decodes a file and computes model-ready features once (first 10 s).

        Args:
            path: a video, audio or image file.
            progress: ``progress(fraction, message)``.
            frames: "official": the 10 official frames (classification ensemble, frame
                choice); "middle": only the official evaluation frame (frame 5 of 10, the
                same pixels), about half the decoding time, enough for embeddings.

        Raises:
            MediaError: a specific subclass for unreadable, unsupported or empty media.
        """
        from cavmae import media

        (progress or _no_progress)(0.0, "decoding")
        if frames == "middle":
            clip = media.load_clip(path, self.features, frame_mode="middle")
        else:
            clip = media.load_clip(path, self.features, num_frames=self.features.num_frames)
        (progress or _no_progress)(1.0, "decoded")
        return PreparedClip(
            path=str(path),
            fbank=clip.fbank,
            frames=clip.frames,
            frames_uint8=clip.frames_uint8 if clip.frames is not None else None,
            frame_times=np.asarray(clip.frame_times, dtype=np.float64),
            waveform=clip.waveform,
            duration_s=float(clip.duration_s or 0.0),
        )

    # --- reconstruction --------------------------------------------------------------------
    @torch.inference_mode()
    def reconstruct(
        self, clip: PreparedClip, spec: MaskSpec = MaskSpec(), frame_index: int | None = None
    ) -> Reconstruction:
        """Masks patches of the clip's audio and one frame, and reconstructs them.

        A missing modality is fed as silence / a black frame and masked completely, so it is
        reconstructed from the other modality alone.
        """
        from cavmae.models.masking import noise_from_patch_mask
        from cavmae.models.patchify import patchify, patchify_audio, unpatchify, unpatchify_audio

        model = self._need_pretrain()
        cfg = model.config
        audio, frame, note = self._inputs_for(clip, frame_index)  # (T, F), (3, S, S)
        ratio_a, ratio_v = spec.ratio_a, spec.ratio_v
        mode_a = spec.mode_a
        noise_a = noise_v = None
        if spec.patches_a is not None:
            mode_a = "unstructured"  # an explicit patch set replaces the structured choice
            noise_a, ratio_a = noise_from_patch_mask(
                torch.as_tensor(np.asarray(spec.patches_a, bool)).reshape(1, -1)
            )
        if spec.patches_v is not None:
            noise_v, ratio_v = noise_from_patch_mask(
                torch.as_tensor(np.asarray(spec.patches_v, bool)).reshape(1, -1)
            )
        if not clip.has_audio:
            ratio_a, noise_a = 1.0, None
        if not clip.has_video:
            ratio_v, noise_v = 1.0, None
        if ratio_a >= 1.0 and ratio_v >= 1.0:
            raise ConfigError("at least one modality must stay partly visible to reconstruct")
        gen = torch.Generator(device="cpu").manual_seed(int(spec.seed))
        a = audio[None].to(self.device)  # (1, T, F)
        v = frame[None].to(self.device)  # (1, 3, S, S)
        with self._autocast():
            out = model.model.forward_inpaint(
                a, v, ratio_a, ratio_v, mode_a,
                noise_a=None if noise_a is None else noise_a.to(self.device),
                noise_v=None if noise_v is None else noise_v.to(self.device),
                generator=gen,
            )
        pred_a = out.pred_a.float()  # (1, L_a, p*p)
        pred_v = out.pred_v.float()  # (1, L_v, p*p*3)
        denorm = bool(cfg.norm_pix_loss)
        p = cfg.patch_size
        if denorm:
            pred_a = _denormalise_patches(pred_a, patchify_audio(a.float(), p))
            pred_v = _denormalise_patches(pred_v, patchify(v.float(), p))
        rec_a = unpatchify_audio(pred_a, cfg.audio_grid, p)[0].cpu().numpy()  # (T, F)
        rec_v = unpatchify(pred_v, cfg.visual_grid, p, cfg.in_chans)[0].cpu().numpy()  # (3, S, S)
        mask_a = out.mask_a[0].float().cpu().numpy()  # (L_a,)
        mask_v = out.mask_v[0].float().cpu().numpy()  # (L_v,)
        pix_a = viz.patch_mask_pixels(mask_a, cfg.audio_grid, p)  # (F, T)
        pix_v = viz.patch_mask_pixels(mask_v, cfg.visual_grid, p)  # (S, S)
        spec_orig = audio.numpy()
        frame_orig = viz.normalised_frame_image(frame.numpy(), self.features.image_mean, self.features.image_std)
        frame_rec = viz.normalised_frame_image(rec_v, self.features.image_mean, self.features.image_std)
        return Reconstruction(
            spec_original=spec_orig,
            spec_reconstruction=rec_a,
            spec_composite=np.where(pix_a.T > 0.5, rec_a, spec_orig),
            frame_original=frame_orig,
            frame_reconstruction=frame_rec,
            frame_composite=viz.paste_visible(frame_orig, frame_rec, pix_v),
            mask_a=mask_a,
            mask_v=mask_v,
            pixel_mask_a=pix_a,
            pixel_mask_v=pix_v,
            loss_a=_finite_or_nan(out.loss_a) if mask_a.sum() > 0 else float("nan"),
            loss_v=_finite_or_nan(out.loss_v) if mask_v.sum() > 0 else float("nan"),
            norm_pix_denormalised=denorm,
            has_audio=clip.has_audio,
            has_video=clip.has_video,
            note=note,
        )

    def loss_sweep(
        self,
        clip: PreparedClip,
        ratios: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9),
        mode_a: str = "unstructured",
        seed: int = 0,
    ) -> dict[str, list[float]]:
        """Reconstruction loss of each modality against the mask ratio (same ratio for both)."""
        la, lv = [], []
        for r in ratios:
            rec = self.reconstruct(clip, MaskSpec(ratio_a=r, ratio_v=r, mode_a=mode_a, seed=seed))  # type: ignore[arg-type]
            la.append(rec.loss_a)
            lv.append(rec.loss_v)
        return {"ratio": [float(r) for r in ratios], "loss_a": la, "loss_v": lv}

    # --- embeddings and similarity --------------------------------------------------------
    def _embed_model(self) -> Any:
        c = self.pretrain or self.classifier
        assert c is not None
        return c

    @torch.inference_mode()
    def token_features(
        self, fbank: torch.Tensor | None, frames: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Unmasked token features after the shared layer (official ``forward_feat``).

        Args:
            fbank: (B, T, F) or None.
            frames: (B, 3, S, S) or None.

        Returns:
            audio tokens (B, L_a, D) and visual tokens (B, L_v, D), float32 on CPU (None where
            the input was None).
        """
        m = self._embed_model().model
        a_tok = v_tok = None
        with self._autocast():
            if fbank is not None:
                a_spec = m.encode_audio_specific(fbank.to(self.device))  # (B, L_a, D)
                a_tok = m.encode_shared(a_spec, "audio").float().cpu()  # (B, L_a, D)
            if frames is not None:
                v_spec = m.encode_visual_specific(frames.to(self.device))  # (B, L_v, D)
                v_tok = m.encode_shared(v_spec, "visual").float().cpu()  # (B, L_v, D)
        return a_tok, v_tok

    def embed(self, clip: PreparedClip, frame_index: int | None = None):  # -> ClipEmbedding
        """L2-normalised mean-pooled audio and visual embeddings (official retrieval, §6.1)."""
        from cavmae.retrieval import ClipEmbedding

        k = clip.middle_index if frame_index is None else frame_index
        a_tok, v_tok = self.token_features(
            None if clip.fbank is None else clip.fbank[None],
            None if clip.frames is None else clip.frames[k : k + 1],
        )
        a = None if a_tok is None else F.normalize(a_tok.mean(1), dim=-1)[0].numpy()  # (D,)
        v = None if v_tok is None else F.normalize(v_tok.mean(1), dim=-1)[0].numpy()  # (D,)
        return ClipEmbedding(audio=a, visual=v)

    def embed_file(self, path: str | Path):  # -> ClipEmbedding
        """Decodes a file (audio and the middle frame only) and embeds it."""
        return self.embed(self.prepare(path, frames="middle"))

    def embed_files(
        self, paths: Iterable[str | Path], workers: int | None = None
    ) -> Iterator[tuple[Path, Any]]:
        """Embeddings of many files, in order, decoding ahead while the model runs.

        ``workers`` threads decode the next files (FFmpeg and PyAV release the GIL) while the
        calling thread runs the model on the current one; at most ``2 * workers`` decoded clips
        wait in memory. Each result equals :meth:`embed_file` of that file.

        Args:
            paths: media files.
            workers: decoding threads; None: the usable cores, at most 4.

        Yields:
            ``(path, ClipEmbedding)``, or ``(path, error)`` with the :class:`CavmaeError` that
            decoding that file raised (the other files go on).
        """
        n = max(1, workers if workers is not None else min(4, available_cores(load=0)))

        def decode(path: Path) -> PreparedClip | CavmaeError:
            try:
                return self.prepare(path, frames="middle")
            except CavmaeError as exc:
                return exc

        todo = iter(Path(p) for p in paths)
        with ThreadPoolExecutor(n, thread_name_prefix="cavmae-decode") as pool:
            pending = deque((p, pool.submit(decode, p)) for p in islice(todo, 2 * n))
            while pending:
                path, fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(decode, nxt)))
                clip = fut.result()
                yield path, clip if isinstance(clip, CavmaeError) else self.embed(clip)

    def patch_similarity(
        self,
        clip: PreparedClip,
        frame_index: int | None = None,
        method: SoundMapMethod = "cosine",
        progress: Progress | None = None,
    ) -> SimilarityMap:
        """Where is the sound: a per-patch map of one frame against the clip's audio.

        Args:
            clip: a prepared clip with audio and video.
            frame_index: the frame (default: the middle one).
            method: "cosine" (audio embedding vs each patch token; one pass) or "occlusion"
                (drop of the audio-visual cosine when the patch is left out; one pass per
                patch). See :mod:`cavmae.inference.sound_map`.
            progress: ``progress(fraction, message)`` for the occlusion passes.
        """
        if method not in SOUND_MAP_METHODS:
            raise ConfigError(f"unknown sound-map method {method!r}; choose one of {SOUND_MAP_METHODS}")
        if not clip.has_audio or not clip.has_video:
            raise (NoAudioStream if not clip.has_audio else NoVideoStream)(
                f"{clip.path}: the sound map needs both audio and video"
            )
        k = clip.middle_index if frame_index is None else int(frame_index)
        m = self._embed_model().model
        fbank = clip.fbank[None].to(self.device)  # type: ignore[index]  # (1, T, F)
        frame = clip.frames[k : k + 1].to(self.device)  # type: ignore[index]  # (1, 3, S, S)
        report = progress or _no_progress
        with self._autocast():
            if method == "cosine":
                sim = cosine_map(m, fbank, frame)  # (L_v,)
            else:
                sim = occlusion_map(
                    m, fbank, frame, progress=lambda f: report(f, "leaving out each patch")
                )  # (L_v,)
        grid = self._embed_model().config.visual_grid
        sim = sim.float().cpu().numpy().reshape(grid)
        frame_u8 = clip.frames_uint8[k]  # type: ignore[index]
        return SimilarityMap(
            grid=sim,
            frame=frame_u8,
            overlay=viz.heatmap_overlay(frame_u8, sim),
            time_s=float(clip.frame_times[k]),
            extra={"method": method},
        )

    @torch.inference_mode()
    def attention(
        self, clip: PreparedClip, frame_index: int | None = None, stream: str = "joint"
    ) -> np.ndarray:
        """Attention weights of the last shared block on the unmasked clip.

        Args:
            clip: from :meth:`prepare`.
            frame_index: which frame (default: the official middle frame).
            stream: "joint" (audio + visual tokens, as in the MAE branch), "audio" or "visual".

        Returns:
            (heads, N, N) float32, rows summing to 1; for "joint" the audio tokens come first.
        """
        m = self._embed_model().model
        k = clip.middle_index if frame_index is None else int(frame_index)
        a = clip.fbank[None].to(self.device) if clip.fbank is not None else None  # (1, T, F)
        v = clip.frames[k : k + 1].to(self.device) if clip.frames is not None else None
        if (stream in ("joint", "audio") and a is None) or (stream in ("joint", "visual") and v is None):
            raise (NoAudioStream if a is None else NoVideoStream)(
                f"{clip.path}: the {stream} attention map needs the missing modality"
            )
        with self._autocast():
            attn = m.shared_attention(a, v, stream)  # (1, heads, N, N)
        return attn[0].float().cpu().numpy()

    def temporal_similarity(
        self,
        path: str | Path,
        window_s: float | None = None,
        hop_s: float | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Audio of window i against the frame at the centre of window j, for one file.

        Defaults: 10 s windows with a 10 s hop for media longer than 20 s, else 2 s windows
        with a 1 s hop. Returns {"starts": (W,), "matrix": (W, W) cosine, "window_s", "hop_s"}.
        """
        from cavmae import media

        info = media.probe(path)
        if not info.has_audio or not info.has_video:
            raise (NoAudioStream if not info.has_audio else NoVideoStream)(
                f"{path}: the temporal similarity needs both audio and video"
            )
        if window_s is None or hop_s is None:
            window_s, hop_s = (10.0, 10.0) if info.duration_s > 20 else (2.0, 1.0)
        a_list, v_list, starts = [], [], []
        for w, a_tok, v_tok in self._window_features(path, window_s, hop_s, progress):
            starts.append(w.start_s)
            a_list.append(F.normalize(a_tok.mean(1), dim=-1))  # (1, D)
            v_list.append(F.normalize(v_tok.mean(1), dim=-1))  # (1, D)
        a = torch.cat(a_list)  # (W, D)
        v = torch.cat(v_list)  # (W, D)
        return {
            "starts": np.asarray(starts),
            "matrix": (a @ v.T).numpy(),
            "window_s": window_s,
            "hop_s": hop_s,
        }

    # --- classification --------------------------------------------------------------------
    def _choose_mode(self, clip_has_audio: bool, clip_has_video: bool, mode: ClassifyMode) -> tuple[str, str]:
        """Picks the model mode for the available modalities; returns (mode, note)."""
        c = self._need_classifier()
        trained = (c.meta or {}).get("mode") or "multimodal"
        if mode != "auto":
            needs_a = mode in ("multimodal", "audioonly", "missingaudioonly")
            needs_v = mode in ("multimodal", "videoonly", "missingvideoonly")
            if needs_a and not clip_has_audio:
                raise NoAudioStream(f"mode {mode!r} needs audio, and this file has no audio track")
            if needs_v and not clip_has_video:
                raise NoVideoStream(f"mode {mode!r} needs video, and this file has no video")
            return mode, ""
        if not clip_has_audio and not clip_has_video:
            raise NoAudioStream("the file has neither audio nor video")
        if trained == "audioonly":
            if not clip_has_audio:
                raise NoAudioStream("this model classifies audio only, and the file has no audio track")
            return "audioonly", ""
        if trained == "videoonly":
            if not clip_has_video:
                raise NoVideoStream("this model classifies video frames only, and the file has no video")
            return "videoonly", ""
        if clip_has_audio and clip_has_video:
            return "multimodal", ""
        if clip_has_audio:
            return "missingaudioonly", "no video stream: used the audio-only fallback of the multimodal model (missingaudioonly)"
        return "missingvideoonly", "no audio track: used the visual-only fallback of the multimodal model (missingvideoonly)"

    @torch.inference_mode()
    def class_probabilities(
        self, fbank: torch.Tensor | None, frames: torch.Tensor | None, mode: str
    ) -> torch.Tensor:
        """Probabilities for a batch, averaging over frames (multi-frame ensemble).

        Args:
            fbank: (B, T, F) or None.
            frames: (B, K, 3, S, S) or None: K frames per clip, predictions averaged over K
                (official 10-frame evaluation). The audio branch runs once per clip, not K times.
            mode: a CAVMAEFT mode.

        Returns:
            (B, C) float32 probabilities on CPU (sigmoid or softmax per ``multi_label``).
        """
        m = self._need_classifier().model
        act = torch.sigmoid if self.multi_label else (lambda x: torch.softmax(x, dim=-1))
        with self._autocast():
            a_spec = m.encode_audio_specific(fbank.to(self.device)) if fbank is not None else None  # (B, L_a, D)
            if frames is None:
                logits = m.forward_from_specific(a_spec, None, mode)  # (B, C)
                return act(logits.float()).cpu()
            b, k = frames.shape[:2]
            v_spec = m.encode_visual_specific(frames.flatten(0, 1).to(self.device))  # (B*K, L_v, D)
            if a_spec is not None:
                a_spec = a_spec.repeat_interleave(k, dim=0)  # (B*K, L_a, D)
            logits = m.forward_from_specific(a_spec, v_spec, mode)  # (B*K, C)
            return act(logits.float()).reshape(b, k, -1).mean(1).cpu()  # (B, C)

    def classify(
        self,
        clip: PreparedClip,
        top_k: int = 5,
        mode: ClassifyMode = "auto",
        ensemble: bool = True,
    ) -> Classification:
        """Top-k labels of a prepared clip.

        Args:
            clip: from :meth:`prepare`.
            top_k: number of predictions returned.
            mode: "auto" picks the model's trained mode, falling back to the official
                missing-modality modes when the file lacks audio or video.
            ensemble: average over all prepared frames (official 10-frame evaluation) instead
                of the middle frame only.
        """
        mode_used, note = self._choose_mode(clip.has_audio, clip.has_video, mode)
        uses_v = mode_used in ("multimodal", "videoonly", "missingvideoonly")
        uses_a = mode_used in ("multimodal", "audioonly", "missingaudioonly")
        frames = None
        if uses_v and clip.frames is not None:
            frames = clip.frames if ensemble else clip.frames[clip.middle_index : clip.middle_index + 1]
            frames = frames[None]  # (1, K, 3, S, S)
        fbank = clip.fbank[None] if (uses_a and clip.fbank is not None) else None
        probs = self.class_probabilities(fbank, frames, mode_used)[0].numpy()  # (C,)
        return self._classification(probs, mode_used, note, 1 if frames is None else frames.shape[1], top_k)

    def classify_timeline(
        self,
        path: str | Path,
        window_s: float = 10.0,
        hop_s: float = 10.0,
        mode: ClassifyMode = "auto",
        top_k: int = 5,
        progress: Progress | None = None,
    ) -> Timeline:
        """Per-window predictions over a whole file (streamed), and their mean as the clip result."""
        from cavmae import media

        info = media.probe(path)
        mode_used, note = self._choose_mode(info.has_audio, info.has_video, mode)
        uses_a = mode_used in ("multimodal", "audioonly", "missingaudioonly")
        uses_v = mode_used in ("multimodal", "videoonly", "missingvideoonly")
        starts, ends, rows = [], [], []
        for w in self._iter_windows(path, window_s, hop_s, progress):
            fb = w.fbank[None] if (uses_a and w.fbank is not None) else None
            fr = w.frames[None] if (uses_v and w.frames is not None) else None
            rows.append(self.class_probabilities(fb, fr, mode_used)[0].numpy())
            starts.append(w.start_s)
            ends.append(w.end_s)
        probs = np.stack(rows)  # (W, C)
        pooled = self._classification(probs.mean(0), mode_used, note, 1, top_k)
        return Timeline(np.asarray(starts), np.asarray(ends), probs, self.labels, pooled)

    # --- helpers ------------------------------------------------------------------------
    def _classification(self, probs: np.ndarray, mode: str, note: str, frames: int, top_k: int) -> Classification:
        names = self.labels
        order = np.argsort(-probs)[: max(1, int(top_k))]
        preds = [Prediction(int(i), names[int(i)], float(probs[int(i)])) for i in order]
        return Classification(preds, probs, mode, self.multi_label, frames, note)

    def _iter_windows(self, path: str | Path, window_s: float, hop_s: float, progress: Progress | None) -> Iterator[Any]:
        from cavmae import media

        info = media.probe(path)
        total = media.count_windows(info.duration_s, window_s, hop_s)
        for i, w in enumerate(media.iter_windows(path, self.features, window_s=window_s, hop_s=hop_s)):
            (progress or _no_progress)((i + 1) / max(total, 1), f"window {i + 1}/{total}")
            yield w

    def _window_features(self, path: str | Path, window_s: float, hop_s: float, progress: Progress | None) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
        for w in self._iter_windows(path, window_s, hop_s, progress):
            if w.fbank is None or w.frames is None:
                continue
            mid = w.frames.shape[0] // 2
            a_tok, v_tok = self.token_features(w.fbank[None], w.frames[mid : mid + 1])
            assert a_tok is not None and v_tok is not None
            yield w, a_tok, v_tok

    def _inputs_for(self, clip: PreparedClip, frame_index: int | None) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Model inputs (T, F) and (3, S, S); placeholders for a missing modality."""
        f = self.features
        notes = []
        if clip.fbank is not None:
            audio = clip.fbank
        else:
            # Silence at the log floor, normalised (what an all-zero waveform gives).
            floor = float(np.log(np.finfo(np.float32).eps))
            audio = torch.full((f.target_length, f.num_mel_bins), (floor - f.fbank_mean) / f.fbank_std)
            notes.append("no audio track: the spectrogram is reconstructed from the frame alone")
        if clip.frames is not None:
            k = clip.middle_index if frame_index is None else int(frame_index)
            frame = clip.frames[k]
        else:
            mean = torch.tensor(f.image_mean).view(3, 1, 1)
            std = torch.tensor(f.image_std).view(3, 1, 1)
            frame = ((torch.zeros(3, f.img_size, f.img_size) - mean) / std).float()
            notes.append("no video: the frame is reconstructed from the audio alone")
        return audio.float(), frame.float(), "; ".join(notes)

    def _need_pretrain(self) -> Any:
        if self.pretrain is None:
            raise ConfigError(
                "reconstruction needs a pretrained CAV-MAE (with decoder); the loaded model is a "
                "fine-tuned classifier. Load a pretraining checkpoint (e.g. cav-mae-scale++ or demo-pretrain)."
            )
        return self.pretrain

    def _need_classifier(self) -> Any:
        if self.classifier is None:
            raise ConfigError(
                "classification needs a fine-tuned CAV-MAE (with a classification head); the "
                "loaded model is a pretraining checkpoint. Load e.g. as-full-51.2, vgg-65.5 or demo."
            )
        return self.classifier

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return inference_autocast(self.device, self.dtype)


def _resolve_spec(spec: str | Path) -> str | Path:
    """A training run directory becomes its exported model; anything else passes through.

    Zoo and bundled names are resolved by ``cavmae.checkpoint.load_checkpoint`` itself, so the
    zoo entry's labels, mode and head type travel with the model.
    """
    p = Path(spec)
    if p.is_dir():
        candidate = p / "model.safetensors"
        if not candidate.is_file():
            raise ConfigError(
                f"{p} is a folder without model.safetensors (not a finished training run)"
            )
        return candidate
    return spec


def _denormalise_patches(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Undoes norm_pix_loss with each original patch's mean and unbiased variance (MAE viz).

    Args:
        pred: (B, L, P) predictions in per-patch normalised units.
        target: (B, L, P) original patches.
    """
    mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
    var = target.var(dim=-1, keepdim=True)  # (B, L, 1) Parity: unbiased, OFFICIAL_CAVMAE.md §2.4
    return pred * (var + 1e-6).sqrt() + mean


def _finite_or_nan(x: torch.Tensor) -> float:
    v = float(x)
    return v if np.isfinite(v) else float("nan")
