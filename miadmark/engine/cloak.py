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
from .eot import gaussian_blur, random_transform
from .spread import engine_marks, spread_watermark
from .transfer import TransferEngine, _loss


def fill_box(xs: torch.Tensor, box_low: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """xs with the box (N, 1, S, S) replaced by a smooth fill from its surroundings (normalized
    convolution): what inpainting the visible logo leaves."""
    k = int(4 * sigma) | 1
    r = torch.arange(k, dtype=xs.dtype, device=xs.device) - k // 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())

    def blur(t):
        c = t.shape[1]
        t = F.conv2d(F.pad(t, (k // 2, k // 2, 0, 0), mode="replicate"), g.view(1, 1, 1, k).expand(c, 1, 1, k),
                     groups=c)
        return F.conv2d(F.pad(t, (0, 0, k // 2, k // 2), mode="replicate"), g.view(1, 1, k, 1).expand(c, 1, k, 1),
                        groups=c)

    keep = 1 - box_low
    fill = blur(xs * keep) / blur(keep).clamp_min(1e-3)
    for _ in range(2):  # wide boxes: a second pass reaches the centre
        fill = torch.where(blur(keep) > 1e-3, fill, blur(fill))
    return xs * keep + fill * box_low


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
        iters = int(self.opt("iterations", 30))
        cap = budget.alpha_cap
        a_min = min(cap, float(self.opt("alpha_min", C.ALPHA_MIN)))
        s_min = float(self.opt("stroke_min", C.STROKE_MIN))
        st_a, st_t = float(self.opt("step_alpha", 0.04)), float(self.opt("step_texture", 0.1))
        st_c = float(self.opt("step_cloak", 0.15))
        mu, fw = float(self.opt("momentum", 1.0)), float(self.opt("feature_weight", 0.5))
        p_fill = float(self.opt("p_fill", 0.5))
        use_eot = bool(self.opt("transforms", True))
        keep_best = bool(self.opt("keep_best", True))

        kind, kappa = str(self.opt("loss", "ce")), float(self.opt("kappa", 5.0))
        l2_cloak = str(self.opt("cloak_step", "sign")) == "l2"
        ti_sigma = float(self.opt("ti_sigma", 0.0))

        def lossf(x_, avoid_, f_):
            return _loss(ens, x_, avoid_, f_, fw, kind, kappa)

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

        params = [a1, t1, u]
        steps = [st_a, st_t, st_c]
        mom = [torch.zeros_like(p) for p in params]
        for p in params:
            p.requires_grad_(True)
        best_loss = torch.full((n,), -float("inf"), device=self.device)
        best = [p.detach().clone() for p in params]

        def remember(lv):
            better = lv > best_loss
            best_loss[better] = lv[better]
            for b, p in zip(best, params):
                b[better] = p.detach()[better]

        for _ in range(iters):
            xc = ens.prep(composite())
            xa = xc
            if use_eot:
                if float(torch.rand(1, generator=gen)) < p_fill:
                    xa = fill_box(xa, box_low)
                xa = random_transform(xa.clamp(0, 1), gen)
            grads = torch.autograd.grad(lossf(xa, avoid, f_clean).sum(), params)
            with torch.no_grad():
                if keep_best:
                    remember(lossf(xc.detach(), avoid, f_clean))
                for j, (p, gr) in enumerate(zip(params, grads)):
                    if j == 2 and ti_sigma > 0:  # a gradient smoothed over shifts transfers to other models
                        gr = gaussian_blur(gr, ti_sigma)
                    gr = gr / gr.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (gr.dim() - 1))
                    mom[j] = mu * mom[j] + gr
                    if j == 2 and l2_cloak:  # L2 steps: the energy goes where the gradient is (PSNR-bound)
                        nrm = mom[j].flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                        p.add_(steps[j] * mom[j] / nrm * mom[j][0].numel() ** 0.5)
                    else:
                        p.add_(steps[j] * mom[j].sign())
                a1.clamp_(a_min, cap)
                t1.clamp_(s_min, 1)
                u.clamp_(-1, 1)
        with torch.no_grad():
            if keep_best:
                remember(lossf(ens.prep(composite()), avoid, f_clean))
                for b, p in zip(best, params):
                    p.copy_(b)
            out = composite()
        bad = C.violations(images, out, les, boxes, budget, tol=1e-5)
        if bad:  # fail closed: an output that breaks the budget never leaves the engine
            raise RuntimeError("cloak engine output breaks its constraints: " + "; ".join(bad))
        secs = time.perf_counter() - t0
        params_out = [{
            "engine": self.name, "design": "box", "strength": strength, "logo": logo_id, "box": b,
            "alpha_cap": cap, "alpha_min": a_min,
            "cloak_linf": budget.cloak_linf, "psnr_min": budget.psnr_min, "iterations": iters,
            "lesion": les_src, "seed": int(self.profile.seed), "surrogates": ens.names,
            "seconds": round(secs / n, 4),
        } for b in boxes]
        return WatermarkBatch(images=out, params=params_out)
