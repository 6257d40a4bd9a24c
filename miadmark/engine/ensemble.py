"""The surrogate ensemble an adversarial engine optimizes against, and Grad-CAM lesion masks from it."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

_CACHE: dict = {}
_LOCK = threading.Lock()
NO_FINDING = re.compile(r"^(no[ _-]?tumou?r|normal|healthy|no[ _-]?finding)$", re.IGNORECASE)


class Ensemble:
    """Several small classifiers at one square input size, all grayscale (1 channel)."""

    def __init__(self, paths: list[Path], device: torch.device):
        from ..surrogates.train import load

        if not paths:
            raise FileNotFoundError("no surrogate weights found (miadmark/surrogates/weights)")
        self.models = [load(p, device) for p in paths]
        self.names = [Path(p).stem for p in paths]
        sizes = {m.meta["in_size"] for m in self.models}
        if len(sizes) != 1:
            raise ValueError("surrogates of one ensemble must share an input size")
        self.size = sizes.pop()
        self.in_ch = self.models[0].meta["in_ch"]
        self.classes = [str(c) for c in self.models[0].meta["classes"]]
        finding = [not NO_FINDING.match(c) for c in self.classes]
        # classes that name a lesion: the Grad-CAM "lesion" mask is taken for the likeliest of these
        self.finding = torch.tensor(finding, device=device) if any(finding) and not all(finding) else None
        self.device = device

    @classmethod
    def get(cls, names: list[str] | None, device: torch.device) -> Ensemble:
        from ..surrogates import surrogate_paths

        paths = surrogate_paths(names)
        key = (tuple(str(p) for p in paths), str(device))
        with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = cls(paths, device)
            return _CACHE[key]

    def prep(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, in_ch, S, S) at the surrogates' resolution (antialiased)."""
        s = size or self.size
        if x.shape[1] != self.in_ch:
            x = x.mean(1, keepdim=True) if self.in_ch == 1 else x.expand(-1, self.in_ch, -1, -1)
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x

    def outputs(self, xs: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per model: logits and pooled penultimate features."""
        logits, feats = [], []
        for m in self.models:
            f = m.features(xs)
            logits.append(m.head(f))
            feats.append(m.pooled(f))
        return logits, feats

    @torch.no_grad()
    def predict(self, xs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(xs).softmax(1) for m in self.models]).mean(0)

    def gradcam(self, xs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, S, S) in [0, 1]: Grad-CAM of each surrogate for its likeliest lesion class, averaged.

        The class is the model's prediction among the classes that name a finding (never "notumor" /
        "normal"): the mask must mark where a lesion would be, and on an image a model calls normal
        the Grad-CAM of "normal" marks the healthy anatomy it reads instead. Taken at the model's
        `cam_layer` (an 8x8 stage at 64x64 input: finer than the last 4x4 map)
        and restricted to the foreground (a lesion lies in tissue, not in air)."""
        cams = []
        with torch.enable_grad():
            for m in self.models:
                layer = getattr(m, "cam_layer", None)
                store = {}
                hook = layer.register_forward_hook(lambda mod, inp, out: store.__setitem__("a", out)) \
                    if layer is not None else None
                try:
                    xg = xs.detach().clone().requires_grad_(True)
                    fmap = m.features(xg)
                    act = store.get("a", fmap)
                    logit = m.head(fmap)
                finally:
                    if hook is not None:
                        hook.remove()
                if labels is not None:
                    y = labels
                elif self.finding is not None:
                    y = logit.masked_fill(~self.finding, float("-inf")).argmax(1)
                else:
                    y = logit.argmax(1)
                (g,) = torch.autograd.grad(logit.gather(1, y[:, None]).sum(), act)
                cam = F.relu((g.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)).detach()
                cam = F.interpolate(cam, size=xs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                cams.append(cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None])
        fg = (xs.mean(1) > 0.04).float()
        cam = torch.stack(cams).mean(0) * fg
        return (cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).detach()


def gradcam_lesion(ens: Ensemble, images: torch.Tensor, threshold: float = 140.0, dilate: int = 0) -> torch.Tensor:
    """Lesion mask (N, H, W) bool at full resolution: Grad-CAM >= threshold on a 0-255 scale."""
    n, _, h, w = images.shape
    cam = ens.gradcam(ens.prep(images))
    cam = F.interpolate(cam[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    mask = cam * 255.0 >= threshold
    if dilate > 0:
        mask = F.max_pool2d(mask[:, None].float(), 2 * dilate + 1, 1, dilate)[:, 0] > 0
    return mask
