"""Shared machinery of the adversarial engines (`transfer`, `paper`): surrogate scale, lesion masks,
lesion-free placement on anatomy, compositing at low and at full resolution."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Engine, ImageContext, WatermarkBatch
from .ensemble import Ensemble, gradcam_lesion
from ..surrogates import surrogates_for_modality
from .logo import box_size, logo_downsampled, logo_tensors


@dataclass
class Layout:
    """One image's logo box at full resolution and at the surrogates' resolution."""

    y: int
    x: int
    bh: int
    bw: int
    ys: int  # box at surrogate scale
    xs: int
    hs: int
    ws: int


def integral(mask: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a zero row/column in front. mask (N, H, W)."""
    s = mask.float().cumsum(-1).cumsum(-2)
    return F.pad(s, (1, 0, 1, 0))


def box_sums(sat: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """Sums of boxes [y:y+bh, x:x+bw] for each image n and each candidate k: (N, K)."""
    y1, x1 = ys + bh, xs + bw
    return (sat[:, y1, x1] - sat[:, ys, x1] - sat[:, y1, xs] + sat[:, ys, xs])


class AdversarialEngine(Engine):
    """Base for engines that optimize a logo against the surrogate ensemble."""

    cam_threshold_default = 140.0  # Grad-CAM lesion threshold on a 0-255 map (paper: 110-170)

    def watermark(self, images: torch.Tensor, lesion: torch.Tensor | None,
                  contexts: list[ImageContext]) -> WatermarkBatch:
        """Images go to the surrogates of their modality (chest radiographs to the chest X-ray model,
        colour photographs to the dermoscopy model, the rest to the brain-MRI ensemble, unless
        options['surrogates'] names one ensemble for all),
        in chunks of at most options['max_batch'] (32) through `_watermark`."""
        n = images.shape[0]
        contexts_ok(contexts, n)
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            groups.setdefault(self._surrogates_for(contexts[i] if contexts else None), []).append(i)
        if len(groups) == 1:  # the usual case: one series, one modality
            return self._with(next(iter(groups)), images, lesion, contexts)
        out = torch.empty(images.shape, dtype=torch.float32, device=self.device)
        params: list = [None] * n
        for names, idx in groups.items():
            sel = torch.tensor(idx, device=images.device)
            r = self._with(names, images[sel], None if lesion is None else lesion[sel],
                           [contexts[i] for i in idx] if contexts else [])
            out[sel.to(self.device)] = r.images.to(self.device)
            for k, i in enumerate(idx):
                params[i] = r.params[k]
        return WatermarkBatch(images=out, params=params)

    def _with(self, names: tuple, images, lesion, contexts) -> WatermarkBatch:
        self._local.names = list(names)
        try:
            return self._chunked(images, lesion, contexts)
        finally:
            self._local.names = None

    def _surrogates_for(self, ctx: ImageContext | None) -> tuple:
        named = self.opt("surrogates", None)
        if named:
            return tuple(named)
        return tuple(surrogates_for_modality(ctx.modality if ctx else "", ctx.photometric if ctx else ""))

    def _chunked(self, images, lesion, contexts) -> WatermarkBatch:
        bs = max(1, int(self.opt("max_batch", 32)))
        n = images.shape[0]
        if n <= bs:
            return self._watermark(images, lesion, contexts)
        outs, params = [], []
        for i in range(0, n, bs):
            r = self._watermark(images[i:i + bs], None if lesion is None else lesion[i:i + bs],
                                contexts[i:i + bs] if contexts else [])
            outs.append(r.images)
            params += r.params
        return WatermarkBatch(images=torch.cat(outs), params=params)

    def _watermark(self, images, lesion, contexts) -> WatermarkBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def opt(self, key: str, default=None):
        """The typed option (options.py: its default when not given); `default` stands in for a None there."""
        value = getattr(self.options, key)
        return default if value is None else value

    @property
    def _local(self) -> threading.local:  # the group being watermarked, per thread (engines are shared)
        if "_tls" not in self.__dict__:
            self.__dict__["_tls"] = threading.local()
        return self.__dict__["_tls"]

    @property
    def ensemble(self) -> Ensemble:
        """The surrogates of the images now being watermarked (Ensemble.get caches the models)."""
        names = getattr(self._local, "names", None) or self.opt("surrogates", None)
        return Ensemble.get(names, self.device)

    # ---- lesion --------------------------------------------------------------------------
    def lesion_mask(self, images: torch.Tensor, lesion: torch.Tensor | None) -> tuple[torch.Tensor, str]:
        if lesion is not None:
            return lesion.to(images.device).bool(), "given"
        thr = float(self.opt("cam_threshold", self.cam_threshold_default))
        return gradcam_lesion(self.ensemble, images, thr, int(self.opt("cam_dilate", 0))), f"gradcam>={thr:g}"

    # ---- placement -----------------------------------------------------------------------
    def layouts(self, images: torch.Tensor, lesion: torch.Tensor, grid: int = 7) -> list[list[Layout]]:
        """Candidate lesion-free boxes per image, on anatomy first (up to `candidates` of them)."""
        n, c, h, w = images.shape
        S = self.ensemble.size
        bh, bw = box_size(h, w, self.profile.max_area_fraction)
        hs, ws = max(2, math.floor(bh * S / h)), max(2, math.floor(bw * S / w))
        gy = torch.linspace(0, S - hs, grid).round().long()
        gx = torch.linspace(0, S - ws, grid).round().long()
        cy, cx = torch.meshgrid(gy, gx, indexing="ij")
        cy, cx = cy.flatten(), cx.flatten()
        fy = (cy * h / S).floor().long().clamp(max=h - bh)
        fx = (cx * w / S).floor().long().clamp(max=w - bw)
        les = box_sums(integral(lesion.cpu()), fy, fx, bh, bw)  # (N, K) lesion pixels in each box
        gray = images.mean(1).cpu()
        fg_thr = float(self.opt("foreground", 0.08))
        fg = box_sums(integral(gray > fg_thr), fy, fx, bh, bw) / (bh * bw)
        keep = int(self.opt("candidates", 8))
        out = []
        for i in range(n):
            free = les[i] == 0
            if not bool(free.any()):  # no lesion-free box on the grid: least overlap (mask zeroed there)
                free = les[i] == les[i].min()
            score = torch.where(free, fg[i], torch.full_like(fg[i], -1.0))
            order = torch.argsort(score, descending=True, stable=True)[:keep]
            order = [int(k) for k in order if bool(free[k])]
            out.append([Layout(int(fy[k]), int(fx[k]), bh, bw, int(cy[k]), int(cx[k]), hs, ws) for k in order])
        return out

    # ---- compositing ---------------------------------------------------------------------
    def logo_low(self, hs: int, ws: int, bh: int, bw: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Logo mask and texture at surrogate scale: the full-resolution logo, area-downsampled."""
        return logo_downsampled(self.profile.logo, (hs, ws), (bh, bw), self.device)

    @staticmethod
    def paste_low(xs: torch.Tensor, lays: list[Layout], m: torch.Tensor, a1: torch.Tensor, t1: torch.Tensor,
                  a2: torch.Tensor | None = None, t2: torch.Tensor | None = None) -> torch.Tensor:
        """x + m*a1*(t1 - x) + (1 - m)*a2*(t2 - x) in each image's box, at surrogate scale.

        m (hs, ws) logo mask; a1, a2 (N, hs, ws) alpha of the strokes and of the backing plate;
        t1, t2 (N, 1, hs, ws) their textures."""
        out = []
        S_h, S_w = xs.shape[-2:]
        for i, L in enumerate(lays):
            reg = xs[i, :, L.ys:L.ys + L.hs, L.xs:L.xs + L.ws]
            d = m * a1[i] * (t1[i] - reg)
            if a2 is not None:
                d = d + (1 - m) * a2[i] * (t2[i] - reg)
            out.append(F.pad(d, (L.xs, S_w - L.xs - L.ws, L.ys, S_h - L.ys - L.hs)))
        return xs + torch.stack(out)

    def paste_full(self, images: torch.Tensor, lesion: torch.Tensor, lays: list[Layout], a1: torch.Tensor,
                   t1: torch.Tensor, a2: torch.Tensor | None = None, t2: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """The composite at full resolution (differentiable): low-res maps upsampled (smooth), the
        full-resolution logo mask, nothing changed on lesion pixels. images (N, C, H, W); the
        textures are grey and go into every channel."""
        n, c, h, w = images.shape
        L0 = lays[0]
        m, _, _ = logo_tensors(self.profile.logo, L0.bh, L0.bw, 1, images.device)

        def up(t):
            t = t if t.dim() == 4 else t[:, None]
            return F.interpolate(t, size=(L0.bh, L0.bw), mode="bilinear", align_corners=False)

        A1, T1 = up(a1), up(t1)
        A2, T2 = (up(a2), up(t2)) if a2 is not None else (None, None)
        deltas = []
        for i, L in enumerate(lays):
            keep = (~lesion[i, L.y:L.y + L.bh, L.x:L.x + L.bw]).float()
            reg = images[i, :, L.y:L.y + L.bh, L.x:L.x + L.bw]
            d = keep * m * A1[i] * (T1[i] - reg)
            if A2 is not None:
                d = d + keep * (1 - m) * A2[i] * (T2[i] - reg)
            deltas.append(F.pad(d, (L.x, w - L.x - L.bw, L.y, h - L.y - L.bh)))
        return images + torch.stack(deltas)

    def pseudo_labels(self, xs: torch.Tensor) -> torch.Tensor:
        return self.ensemble.predict(xs).argmax(1)

    @staticmethod
    def finish(images: torch.Tensor, out: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
        out = out.clamp(0, 1)
        return torch.where(lesion[:, None].expand_as(images), images, out)


def contexts_ok(contexts: list[ImageContext], n: int) -> None:
    if contexts is not None and len(contexts) not in (0, n):
        raise ValueError(f"{len(contexts)} contexts for {n} images")
