"""`cloak` (default): a see-through logo plus an imperceptible cloak over the rest of the image,
optimized jointly against the surrogate ensemble of the image's modality.

The limits live in `constraints.py` (logo opacity <= 0.5 at every box pixel and no backing plate;
cloak <= `cloak_linf`/255 times a perceptual mask, PSNR outside the box >= 40 dB; lesion untouched);
every output is checked against them before it leaves the engine (fail closed).

Optimization (as in `transfer`): momentum sign steps (MI-FGSM), input diversity and expectation over a
third party's transforms (JPEG q50-95, resizing, blur, 8-bit rounding), plus box removal: in a share
of the steps (`p_fill`, 0.5) the box is filled from its surroundings (normalized convolution, a
differentiable stand-in for inpainting) so that the cloak alone must carry the attack when the logo is
painted over. The loss moves the ensemble off its prediction and every plausible class (`avoid`) and
its pooled features off the clean ones. Parameters: the logo's alpha map and texture at half the box's
surrogate-scale size, the cloak at the surrogates' resolution (smooth after upsampling: survives JPEG
and resizing), both upsampled into the full-resolution image.

Options (Profile.options): iterations (30), alpha_min (0.25: the logo stays visible), stroke_min
(0.5: bright strokes), step_alpha (0.04), step_texture (0.1), step_cloak (0.15 of the budget per step),
momentum (1.0), feature_weight (0.5), loss ("ce"; "cw": logit margin capped at kappa), cloak_step ("sign";
"l2": normalized-gradient steps), ti_sigma (0: off; > 0 smooths the cloak's gradient with a Gaussian of
that sigma in surrogate pixels, translation-invariant attack, Dong et al. 2019), p_fill (0.5), avoid (0.2),
candidates (8), cam_threshold (170), surrogates (names), keep_best (True), and the budget's fields
(constraints.Budget: cloak_linf (8), flat_weight (0.25), background_weight (0), psnr_min (40), alpha_cap (0.5)).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import constraints as C
from .base import ImageContext, WatermarkBatch
from .ascent import ascend
from .spread import engine_marks, spread_watermark
from .transfer import TransferEngine, _loss


class CloakEngine(TransferEngine):
    name = "cloak"
    cam_threshold_default = 170.0

    def budget(self) -> C.Budget:
        """The budget every output is checked against: the strength level's, with the options' overrides."""
        return C.level_budget(self.profile.strength, self.options.budget_fields(),
                              float(self.profile.max_area_fraction))

    def marks(self, images: torch.Tensor, lesion: torch.Tensor, contexts: list[ImageContext]):
        """The spread marks (spread.Marks: strokes, support, geometry) this engine paints on these images with
        this lesion mask (the same keyed geometry): which pixels the visible mark may touch."""
        n, _, h, w = images.shape
        return engine_marks(self, n, h, w, lesion.to(self.device).bool(), contexts, self.budget())

    def _watermark(self, images: torch.Tensor, lesion: torch.Tensor | None,
                   contexts: list[ImageContext]) -> WatermarkBatch:
        budget = self.budget()
        strength = self.profile.strength or C.DEFAULT_STRENGTH
        if C.level_of(strength).design == "spread":
            return spread_watermark(self, images, lesion, contexts, budget, strength)
        t0 = time.perf_counter()
        n, c, h, w = images.shape
        images = images.to(self.device, torch.float32)
        ens = self.ensemble
        gen = torch.Generator().manual_seed(int(self.profile.seed))
        o = self.options
        cap = budget.alpha_cap
        a_min = min(cap, float(self.opt("alpha_min", C.ALPHA_MIN)))
        s_min = float(self.opt("stroke_min", C.STROKE_MIN))

        def lossf(x_, avoid_, f_):
            return _loss(ens, x_, avoid_, f_, o.feature_weight, o.loss, o.kappa)

        with torch.no_grad():
            les, les_src = self.lesion_mask(images, lesion)
            xs = ens.prep(images)
            avoid = self.avoid_classes(xs)
            f_clean = [f.detach() for f in ens.outputs(xs)[1]]
            cands = self.layouts(images, les)
            L0 = cands[0][0]
            m_low, tex, logo_id = self.logo_low(L0.hs, L0.ws, L0.bh, L0.bw)
            ps = float(self.opt("param_scale", 0.5))
            hp, wp = max(2, round(L0.hs * ps)), max(2, round(L0.ws * ps))
            tex = F.interpolate(tex[None], size=(hp, wp), mode="bilinear", antialias=True, align_corners=False)[0]
            a1 = torch.full((n, hp, wp), cap, device=self.device)
            t1 = tex.expand(n, 1, hp, wp).clone().clamp(min=s_min)
            zeros = torch.zeros(n, hp, wp, device=self.device)
            start = [(a1, t1, zeros, zeros[:, None])]  # no plate: the prior's plate maps do not apply
            lays, _ = self.pick_start(xs, avoid, f_clean, cands, m_low, start, lossf)
            boxes = [[L.y, L.x, L.y + L.bh, L.x + L.bw] for L in lays]
            inside = C.box_mask(n, h, w, boxes, self.device)
            cmask = C.perceptual_mask(images, les | inside, budget, size=ens.size)
            m_full = self.logo_low(L0.bh, L0.bw, L0.bh, L0.bw)[0]  # the logo's shape at full resolution
            box_low = torch.zeros(n, 1, ens.size, ens.size, device=self.device)
            for i, L in enumerate(lays):
                box_low[i, :, L.ys:L.ys + L.hs, L.xs:L.xs + L.ws] = 1
        cu = c if ens.in_ch == 3 else 1
        u = torch.zeros(n, cu, ens.size, ens.size, device=self.device)

        def composite():
            return C.compose(images, les, boxes, *C.logo_layers(m_full, a1, t1, (L0.bh, L0.bw)),
                             C.upsample(u, (h, w)), cmask, budget)

        def clamp():
            a1.clamp_(a_min, cap)
            t1.clamp_(s_min, 1)
            u.clamp_(-1, 1)

        ascend([a1, t1, u], [o.step_alpha, o.step_texture, o.step_cloak], clamp, composite, ens.prep,
               lambda x: lossf(x, avoid, f_clean), box_low, gen, o, cloak=2)
        with torch.no_grad():
            out = composite()
        bad = C.violations(images, out, les, boxes, budget, tol=1e-5)
        if bad:  # fail closed: an output that breaks the budget never leaves the engine
            raise RuntimeError("cloak engine output breaks its constraints: " + "; ".join(bad))
        secs = time.perf_counter() - t0
        params_out = [{
            "engine": self.name, "design": "box", "strength": strength, "logo": logo_id, "box": b,
            "alpha_cap": cap, "alpha_min": a_min,
            "cloak_linf": budget.cloak_linf, "psnr_min": budget.psnr_min, "iterations": o.iterations,
            "lesion": les_src, "seed": int(self.profile.seed), "surrogates": ens.names,
            "seconds": round(secs / n, 4),
        } for b in boxes]
        return WatermarkBatch(images=out, params=params_out)
