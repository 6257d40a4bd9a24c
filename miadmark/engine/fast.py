"""`fast`: the `cloak` watermark (see-through logo + imperceptible cloak) made in one forward pass of a trained
generator (generator.py) instead of 30 optimization steps: the CPU profile (`auto` picks it without a GPU).

Per batch: the lesion mask as every adversarial engine gets it (given, else Grad-CAM of the surrogates); the
box at the first lesion-free placement of `layouts` (the candidate most covered by anatomy, never over the
lesion); one generator pass at the surrogates' resolution; the paste at full resolution through
`constraints.compose` with the same Budget and perceptual mask as `cloak`, checked by `constraints.violations`
(an output that breaks them never leaves the engine). Deterministic: eval mode, no randomness.

The generator is chosen like the surrogates (brain MRI / chest X-ray / dermoscopy family, by Modality and
Photometric Interpretation); a missing weights file is a GeneratorMissingError (the image fails closed).
Options (Profile.options): generator (a weights path for every image instead of the family's), surrogates,
cam_threshold (170), candidates, alpha_min / stroke_min (the logo's floor, as in cloak), the Budget's fields.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import constraints as C
from .adversarial import AdversarialEngine, contexts_ok
from .base import ImageContext, WatermarkBatch
from .generator import (GeneratorMissingError, compose_maps, generator_path, load_generator, spread_maps,
                        watermark_maps)
from .spread import engine_marks, mark_layers


class FastEngine(AdversarialEngine):
    name = "fast"
    cam_threshold_default = 170.0

    def design(self) -> tuple[str, str, str | None]:
        """(strength asked for, strength served, why they differ): a spread level (standard, strong) is served by
        the spread generator of the surrogates (or the one named by the `generator` option) when there is one,
        else by the box design with the `discreet` budget, and the record says so."""
        asked = self.profile.strength or C.DEFAULT_STRENGTH
        if C.level_of(asked).design == "box":
            return asked, asked, None
        named = self.opt("generator", None)
        try:
            design = load_generator(named, self.device).meta.get("design", "box") if named else \
                (generator_path(self.ensemble.names, "spread") and "spread")
        except GeneratorMissingError:
            design = "box"
        if design == "spread":
            return asked, asked, None
        return asked, "discreet", "no one-pass generator of the spread design: box design, discreet budget"

    def generator(self, design: str = "box"):
        ens = self.ensemble
        path = self.opt("generator", None) or generator_path(ens.names, design)
        net = load_generator(path, self.device)
        if (net.meta["in_ch"], net.meta.get("in_size")) != (ens.in_ch, ens.size):
            raise GeneratorMissingError(f"{path}: made for {net.meta['in_ch']} channel(s) at {net.meta.get('in_size')}"
                                        f" px, the surrogates take {ens.in_ch} at {ens.size}")
        return net

    def _spread(self, images: torch.Tensor, lesion: torch.Tensor | None, contexts: list[ImageContext],
                strength: str) -> WatermarkBatch:
        """The spread mark in one generator pass: the keyed lattice as `cloak` draws it, the generator's opacity,
        texture and cloak maps at the surrogates' scale, composed and checked like `cloak`'s."""
        t0 = time.perf_counter()
        n, _, h, w = images.shape
        ens, o = self.ensemble, self.options
        net = self.generator("spread")
        budget = C.level_budget(strength, o.budget_fields(), float(self.profile.max_area_fraction))
        with torch.no_grad():
            les, les_src = self.lesion_mask(images, lesion)
            marks = engine_marks(self, n, h, w, les, contexts, budget)
            mark_low = F.adaptive_max_pool2d(marks.support[:, None].float(), (ens.size, ens.size))
            alpha, texture, cloak = spread_maps(net, ens.prep(images), mark_low, budget)
            a, t = mark_layers(marks, alpha, texture, (h, w), budget, o.stroke_floor, o.stroke_min)
            cmask = C.perceptual_mask(images, les | marks.support, budget, size=ens.size)
            out = C.compose_mark(images, les, marks.support, a, t, C.upsample(cloak, (h, w)), cmask, budget)
        bad = C.violations_mark(images, out, les, marks.support, budget, tol=1e-5)
        if bad:  # fail closed: an output that breaks its level's budget never leaves the engine
            raise RuntimeError(f"fast engine output breaks the {strength} budget: " + "; ".join(bad))
        secs = time.perf_counter() - t0
        gen_id = f"{net.meta.get('name', 'generator')}@{net.meta['sha256'][:12]}"
        cover = marks.support.flatten(1).float().mean(1).tolist()
        return WatermarkBatch(images=out, params=[{
            "engine": self.name, "design": "spread", "strength": strength, "strength_asked": strength,
            "fallback": None, "box": [0, 0, h, w], "geometry": marks.geometry[i].record(),
            "coverage": round(cover[i], 5), "alpha_cap": budget.alpha_cap, "coverage_max": budget.max_area_fraction,
            "cloak_linf": budget.cloak_linf, "psnr_min": budget.psnr_min, "generator": gen_id, "lesion": les_src,
            "surrogates": ens.names, "seconds": round(secs / n, 4)} for i in range(n)])

    def _watermark(self, images: torch.Tensor, lesion: torch.Tensor | None,
                   contexts: list[ImageContext]) -> WatermarkBatch:
        t0 = time.perf_counter()
        n, _, h, w = images.shape
        contexts_ok(contexts, n)
        images = images.to(self.device, torch.float32)
        ens = self.ensemble
        asked, served, fallback = self.design()
        if C.level_of(served).design == "spread":
            return self._spread(images, lesion, contexts, served)
        net = self.generator()
        budget = C.level_budget(served, self.options.budget_fields(), float(self.profile.max_area_fraction))
        a_min = min(budget.alpha_cap, float(self.opt("alpha_min", C.ALPHA_MIN)))
        s_min = float(self.opt("stroke_min", C.STROKE_MIN))
        with torch.no_grad():
            les, les_src = self.lesion_mask(images, lesion)
            lays = [cands[0] for cands in self.layouts(images, les)]
            boxes = [[L.y, L.x, L.y + L.bh, L.x + L.bw] for L in lays]
            boxes_low = [[L.ys, L.xs, L.ys + L.hs, L.xs + L.ws] for L in lays]
            box_low = C.box_mask(n, ens.size, ens.size, boxes_low, self.device)[:, None].float()
            alpha, texture, cloak = watermark_maps(net, ens.prep(images), box_low, budget, a_min, s_min)
            cmask = C.perceptual_mask(images, les | C.box_mask(n, h, w, boxes, self.device), budget, size=ens.size)
            shape, _, logo_id = self.logo_low(lays[0].bh, lays[0].bw, lays[0].bh, lays[0].bw)
            out = compose_maps(images, les, boxes, boxes_low, shape, alpha, texture, cloak, cmask, budget)
        bad = C.violations(images, out, les, boxes, budget, tol=1e-5)
        if bad:  # fail closed: an output that breaks the budget never leaves the engine
            raise RuntimeError("fast engine output breaks its constraints: " + "; ".join(bad))
        secs = time.perf_counter() - t0
        gen_id = f"{net.meta.get('name', 'generator')}@{net.meta['sha256'][:12]}"
        params_out = [{
            "engine": self.name, "design": "box", "strength": served, "strength_asked": asked, "fallback": fallback,
            "logo": logo_id, "box": b, "alpha_cap": budget.alpha_cap,
            "alpha_min": a_min, "cloak_linf": budget.cloak_linf, "psnr_min": budget.psnr_min, "generator": gen_id,
            "lesion": les_src, "surrogates": ens.names, "seconds": round(secs / n, 4),
        } for b in boxes]
        return WatermarkBatch(images=out, params=params_out)
