"""Visual features: the open_clip image tower applied to each sampled frame, one step per frame.

The model is one of
  - an open_clip architecture with params.pretrained, a tag from open_clip's registry
    (model "ViT-B-32", pretrained "laion2b_s34b_b79k"); weights = sha256 of the downloaded checkpoint;
  - a directory with open_clip_config.json + a checkpoint (local, "package:" and "random:" models);
  - a hub repo in that same layout ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K"); weights = its revision.
Params recorded with the features: fps and max_frames (read by the media decoder), pretrained.

Frames are preprocessed on the device with the model's own preprocessing config (resize mode, size, mean, std)
and the frames of all clips in a batch go through the tower in chunks of FRAME_CHUNK.
"""
from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from . import EncoderConfig, autocast, encode_present, make_spec
from ...weights import file_sha256, weights_identity
from ..random_models import encoder_source

DEFAULT_FPS = 2  # frames per second the media decoder samples, when a preset does not say
DEFAULT_MAX_FRAMES = 32  # cap per clip: longer clips are sampled more sparsely
HUB_CONFIG = "open_clip_config.json"  # the file open_clip reads first from a hub repo
FRAME_CHUNK = 256  # frames per forward pass: large enough to keep a GPU busy, small enough for its memory


class CLIPImageEncoder:
    def __init__(self, config: EncoderConfig, device: torch.device):
        self.config, self.device = config, device
        name, pretrained, weights = self._locate(config)
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        self.preprocess = open_clip.get_model_preprocess_cfg(model)
        self.visual = model.visual.eval()  # the text tower is dropped here, freeing its memory
        self.size = _pair(self.preprocess["size"])  # (H, W) the tower expects
        with torch.inference_mode():
            dim = self.visual(torch.zeros(1, 3, *self.size, device=device)).shape[-1]
        self.mean = torch.tensor(self.preprocess["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.preprocess["std"], device=device).view(1, 3, 1, 1)
        self.spec = make_spec(config, weights, dim, image_size=list(self.size),
                              resize_mode=self.preprocess.get("resize_mode", "shortest"),
                              fps=config.params.get("fps", DEFAULT_FPS),
                              max_frames=config.params.get("max_frames", DEFAULT_MAX_FRAMES))

    @staticmethod
    def _locate(config: EncoderConfig) -> tuple[str, str | None, str]:
        """(model name for open_clip, pretrained tag or None, weights identity)."""
        tag = config.params.get("pretrained")
        if tag:
            pretrained_cfg = open_clip.get_pretrained_cfg(config.model, tag)
            if not pretrained_cfg:
                raise ValueError(f"open_clip has no pretrained {tag!r} for {config.model!r}; choose one of "
                                 f"{open_clip.list_pretrained_tags_by_model(config.model)}")
            checkpoint = open_clip.download_pretrained(pretrained_cfg)
            return config.model, tag, file_sha256(checkpoint)
        if config.model in open_clip.list_models():
            raise ValueError(f"open_clip architecture {config.model!r} needs params.pretrained, one of "
                             f"{open_clip.list_pretrained_tags_by_model(config.model)}; fix the preset")
        source = encoder_source(config.model)
        if source.path is not None:
            return f"local-dir:{source.directory(config.model)}", None, weights_identity(source)
        if source.revision:
            raise ValueError(f"{config.model!r}: open_clip loads a hub model at its default branch, not at a "
                             f"pinned revision. Fix: download that revision and give its directory")
        from huggingface_hub import hf_hub_download

        # Fetched now so that its revision can be read from the hub cache (create_model then finds it there).
        hf_hub_download(source.hub_id, HUB_CONFIG)
        return f"hf-hub:{source.hub_id}", None, weights_identity(source, HUB_CONFIG)

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray | None]) -> list[np.ndarray | None]:
        return encode_present(batch, self._encode, self.config.max_steps)

    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        embeddings, pending, pending_frames = [], [], 0
        for frames in clips:
            pending.append(self._prepare(frames))
            pending_frames += len(frames)
            if pending_frames >= FRAME_CHUNK:
                embeddings.append(self._embed(torch.cat(pending)))
                pending, pending_frames = [], 0
        if pending:
            embeddings.append(self._embed(torch.cat(pending)))
        return list(torch.cat(embeddings).split([len(f) for f in clips]))  # per clip (N_i, D)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            return self.visual(images).float()  # (N, D)

    def _prepare(self, frames: np.ndarray) -> torch.Tensor:
        """(N, h, w, 3) uint8 -> (N, 3, H, W) normalised, as open_clip's eval transform does it (but batched)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, h, w, 3) uint8, got {frames.shape} {frames.dtype}")
        frames = np.require(frames, requirements=["C", "W"])  # torch refuses read-only arrays (e.g. from PyAV)
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255
        h, w = x.shape[-2:]
        size_h, size_w = self.size
        mode = self.preprocess.get("resize_mode", "shortest")
        if mode == "squash":
            x = self._resize(x, (size_h, size_w))
        elif mode == "shortest":  # shorter side to size (torchvision Resize), then centre crop
            scale = max(size_h, size_w) / min(h, w)
            x = self._resize(x, (max(size_h, int(h * scale)), max(size_w, int(w * scale))))
            top, left = round((x.shape[-2] - size_h) / 2), round((x.shape[-1] - size_w) / 2)  # as CenterCrop
            x = x[..., top:top + size_h, left:left + size_w]
        elif mode == "longest":  # longer side to size, then pad with the fill colour
            scale = min(size_h / h, size_w / w)
            x = self._resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))
            pad_h, pad_w = size_h - x.shape[-2], size_w - x.shape[-1]
            fill = float(self.preprocess.get("fill_color", 0)) / 255
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
        else:
            raise ValueError(f"{self.config.model}: unknown open_clip resize_mode {mode!r}")
        return (x - self.mean) / self.std  # (N, 3, H, W)

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        mode = "bilinear" if self.preprocess.get("interpolation") == "bilinear" else "bicubic"
        # PIL resizes antialiased and clips to [0, 255]; match both
        return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).clamp(0, 1)


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)
