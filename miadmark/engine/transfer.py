"""`transfer` (default): the logo's alpha map and texture optimized by gradient against the surrogate
ensemble, with momentum (MI-FGSM), input diversity (DI) and expectation over the transforms a third
party applies (JPEG q50-95, resizing, blur, 8-bit rounding), so that it transfers to unseen models
and survives re-encoding.

The watermark is a visible badge inside one box (<= max_area_fraction of the image) placed on anatomy
off the lesion: the logo strokes (alpha in [alpha_min, alpha_max], bright texture) over a backing
plate (alpha <= plate_alpha_max, free texture). Parameters live at the surrogates' resolution and
are upsampled (smooth) into the full-resolution image. Optional: an L-inf perturbation outside the
box and the lesion (`linf`, in grey levels of 255).

Start: the plain logo and each map set of the universal prior (`prior.py`, optimized once over the
training images: one per target class and one untargeted) are tried at every candidate placement;
each image starts from the pair its surrogates find most damaging, then takes the per-image steps.

Options (Profile.options): iterations (30), alpha_min (0.35), stroke_alpha_max (profile.alpha_max
+ 0.15 = 0.75 by default, at most 1), plate_alpha_max (0.8), param_scale (0.5: alpha/texture maps at
half the box's surrogate-scale size: smoother, transfers better), stroke_min (0.4), contrast (0.15:
the plate stays darker than the strokes, so the logo reads), step_alpha (0.05), step_texture (0.12),
momentum (1.0), feature_weight (0.5), loss ("ce"; "cw" / "cwm": logit margin capped at kappa (5) on
the ensemble mean / per model; "cem": per-model cross-entropy capped at kappa), eot (1 sample / step),
candidates (8), cam_threshold (170), linf (0), surrogates (names), prior (None: the committed prior
made for these surrogates; a path; False: none), avoid (0.2: classes the clean ensemble gives at least
this probability are avoided along with its prediction), keep_best (True: each image keeps the
iterate its surrogates score most damaging, untransformed, not the last one). Defaults before the
2026-11-27 retune: 15 iterations, strokes <= alpha_max (0.6), plate <= 0.65, stroke_min 0.55,
contrast 0.25, steps 0.08 / 0.2.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .adversarial import AdversarialEngine, contexts_ok
from .ascent import KeepBest, momentum_step
from .base import ImageContext, WatermarkBatch
from .eot import random_transform
from .prior import A_MIN, CONTRAST, P_MAX, S_MIN, clamp_maps, default_prior, fit_prior, load_prior


def _away(z: torch.Tensor, avoid: torch.Tensor) -> torch.Tensor:
    """-log of the probability mass on the avoided classes (the cross-entropy when one is avoided)."""
    return z.logsumexp(1) - z.masked_fill(~avoid, -1e9).logsumexp(1)


def _margin(z: torch.Tensor, avoid: torch.Tensor, kappa: float) -> torch.Tensor:
    """Best other logit minus best avoided logit, capped at kappa (C&W)."""
    return (z.masked_fill(avoid, -1e9).amax(1) - z.masked_fill(~avoid, -1e9).amax(1)).clamp(max=kappa)


def avoid_mask(p: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """(N, C) bool from the clean ensemble's probabilities p: its prediction and every class with at least
    `threshold` of the probability (one class always stays free to move to)."""
    top = F.one_hot(p.argmax(1), p.shape[1]).bool()
    return top | ((p >= threshold) & (p > p.amin(1, keepdim=True)))


def _loss(ens, x, avoid, f_clean, fw, kind="ce", kappa=5.0):
    """The attack's objective (maximized): move the ensemble off the classes in `avoid` (N, C), keep
    features away from the clean ones. kind: "ce" on the ensemble's mean logits, "cem" per model capped
    at kappa, "cw" / "cwm" logit margins on the mean / per model."""
    logits, feats = ens.outputs(x)
    z = torch.stack(logits).mean(0)
    if kind == "cw":
        ce = _margin(z, avoid, kappa)
    elif kind == "cwm":
        ce = torch.stack([_margin(zz, avoid, kappa) for zz in logits]).mean(0)
    elif kind == "cem":
        ce = torch.stack([_away(zz, avoid).clamp(max=kappa) for zz in logits]).mean(0)
    else:
        ce = _away(z, avoid)
    fl = torch.stack([1 - F.cosine_similarity(f, fc, dim=1) for f, fc in zip(feats, f_clean)]).mean(0)
    return ce + fw * fl


class TransferEngine(AdversarialEngine):
    name = "transfer"
    cam_threshold_default = 170.0

    def prior_inits(self, n: int, hp: int, wp: int, limits: tuple) -> list[tuple]:
        """Starting maps from the universal prior (option `prior`: a path, or None for the default file
        made for this ensemble, or False for none), clamped to this run's logo limits."""
        path = self.opt("prior", None)
        if path is False:
            return []
        if path is None:
            path = default_prior(self.ensemble.names)
            if path is None:
                return []
        out = []
        for maps in load_prior(path)["priors"].values():
            a1, t1, a2, t2 = (t.clone() for t in fit_prior(maps, n, hp, wp, self.device))
            clamp_maps(a1, t1, a2, t2, *limits)
            out.append((a1, t1, a2, t2))
        return out

    def avoid_classes(self, xs: torch.Tensor) -> torch.Tensor:
        """(N, C) bool: the classes the attack moves the surrogates away from. No label is known, so
        besides the predicted class every class the clean ensemble gives at least `avoid` (0.2) of
        its probability: when the prediction is wrong, the truth is usually among them, and pushing
        off the prediction alone would often land on the truth (measured: most of the white-box
        residue before this)."""
        return avoid_mask(self.ensemble.predict(xs), float(self.opt("avoid", 0.2)))

    def pick_start(self, xs, avoid, f_clean, cands, m_low, inits, lossf) -> tuple[list, list[int]]:
        """Query every (start maps, lesion-free placement) pair at the surrogates' scale, all starts in
        one batch; per image keep the most damaging. Returns the layouts and the chosen start index."""
        n, n_starts = xs.shape[0], len(inits)
        L0 = cands[0][0]

        def up(t):
            t = t if t.dim() == 4 else t[:, None]
            return F.interpolate(t, size=(L0.hs, L0.ws), mode="bilinear", align_corners=False)

        a1, t1, a2, t2 = (torch.cat([up(st[q]) for st in inits]) for q in range(4))
        xs_all, avoid_all = xs.repeat(n_starts, 1, 1, 1), avoid.repeat(n_starts, 1)
        f_all = [f.repeat(n_starts, 1) for f in f_clean]
        k_max = max(len(cl) for cl in cands)
        losses = []
        for k in range(k_max):
            lk = [cl[min(k, len(cl) - 1)] for cl in cands]
            comp = self.paste_low(xs_all, lk * n_starts, m_low, a1[:, 0], t1, a2[:, 0], t2).clamp(0, 1)
            losses.append(lossf(comp, avoid_all, f_all).view(n_starts, n))
        loss = torch.stack(losses)  # (placement, start, image)
        flat = loss.permute(2, 0, 1).reshape(n, -1).argmax(1)
        ks, js = (flat // n_starts).tolist(), (flat % n_starts).tolist()
        lays = [cands[i][min(ks[i], len(cands[i]) - 1)] for i in range(n)]
        return lays, js

    def _watermark(self, images: torch.Tensor, lesion: torch.Tensor | None,
                   contexts: list[ImageContext]) -> WatermarkBatch:
        t0 = time.perf_counter()
        n, _, h, w = images.shape
        contexts_ok(contexts, n)
        images = images.to(self.device, torch.float32)
        ens = self.ensemble
        gen = torch.Generator().manual_seed(int(self.profile.seed))
        iters = int(self.opt("iterations", 30))
        a_max = min(1.0, float(self.opt("stroke_alpha_max", float(self.profile.alpha_max) + 0.15)))
        a_min = min(a_max, float(self.opt("alpha_min", A_MIN)))
        p_max = float(self.opt("plate_alpha_max", P_MAX))
        s_min = float(self.opt("stroke_min", S_MIN))
        contrast = float(self.opt("contrast", CONTRAST))  # plate at least this much darker than the strokes
        st_a, st_t = float(self.opt("step_alpha", 0.05)), float(self.opt("step_texture", 0.12))
        mu, fw = float(self.opt("momentum", 1.0)), float(self.opt("feature_weight", 0.5))
        eot = max(1, int(self.opt("eot", 1)))
        linf = float(self.opt("linf", 0)) / 255.0
        use_eot = bool(self.opt("transforms", True))
        lk_, kap = str(self.opt("loss", "ce")), float(self.opt("kappa", 5.0))

        def lossf(x_, avoid_, f_):  # the attack's loss for images x_, classes to avoid, clean features f_
            return _loss(ens, x_, avoid_, f_, fw, lk_, kap)

        with torch.no_grad():
            les, les_src = self.lesion_mask(images, lesion)
            g = images.mean(1, keepdim=True)
            xs = ens.prep(g)
            avoid = self.avoid_classes(xs)
            f_clean = [f.detach() for f in ens.outputs(xs)[1]]
            cands = self.layouts(images, les)
            L0 = cands[0][0]
            m_low, tex, logo_id = self.logo_low(L0.hs, L0.ws, L0.bh, L0.bw)
            hs, ws = L0.hs, L0.ws
            ps = float(self.opt("param_scale", 0.5))  # < 1: coarser, smoother maps (transfer better)
            hp, wp = max(2, round(hs * ps)), max(2, round(ws * ps))
            tex = F.interpolate(tex[None], size=(hp, wp), mode="bilinear", antialias=True, align_corners=False)[0]
            a1 = torch.full((n, hp, wp), a_max, device=self.device)
            t1 = tex.expand(n, 1, hp, wp).clone().clamp(min=s_min)
            a2 = torch.zeros(n, hp, wp, device=self.device)
            t2 = torch.full((n, 1, hp, wp), 0.3, device=self.device)
            inits = [(a1, t1, a2, t2)] + self.prior_inits(n, hp, wp, (a_min, a_max, p_max, s_min, contrast))
            lays, choice = self.pick_start(xs, avoid, f_clean, cands, m_low, inits, lossf)
            a1, t1, a2, t2 = (torch.stack([inits[choice[i]][q][i] for i in range(n)]).clone() for q in range(4))

        # lesion at surrogate scale (any lesion pixel inside a low-res pixel freezes it)
        les_low = F.adaptive_max_pool2d(les[:, None].float(), (ens.size, ens.size))[:, 0] > 0
        out_box = torch.ones(n, 1, ens.size, ens.size, device=self.device)
        for i, L in enumerate(lays):
            out_box[i, :, L.ys:L.ys + hs, L.xs:L.xs + ws] = 0
        out_box = out_box * (~les_low[:, None]).float()
        delta = torch.zeros(n, 1, ens.size, ens.size, device=self.device)

        params = [a1, t1, a2, t2] + ([delta] if linf > 0 else [])
        mom = [torch.zeros_like(p) for p in params]
        for p in params:
            p.requires_grad_(True)
        keep = KeepBest(params) if self.opt("keep_best", True) else None
        steps = [st_a, st_t, st_a, st_t, linf / 4]

        def composite():
            xa = ens.prep(self.paste_full(g, les, lays, a1, t1, a2, t2))
            return (xa + delta * out_box) if linf > 0 else xa

        for _ in range(iters):
            xc, total = composite(), 0  # full-resolution paste once; each EOT sample transforms it
            for _ in range(eot):
                xa = random_transform(xc.clamp(0, 1), gen) if use_eot else xc
                total = total + lossf(xa, avoid, f_clean).sum()
            grads = torch.autograd.grad(total, params)
            with torch.no_grad():
                if keep is not None:  # the iterate before this step, untransformed
                    keep.see(lossf(xc.detach().clamp(0, 1), avoid, f_clean))
                momentum_step(params, grads, mom, steps, mu)
                clamp_maps(a1, t1, a2, t2, a_min, a_max, p_max, s_min, contrast)
                if linf > 0:
                    delta.clamp_(-linf, linf)
        if keep is not None:
            with torch.no_grad():
                keep.see(lossf(composite().clamp(0, 1), avoid, f_clean))
                keep.restore()

        with torch.no_grad():
            a1, t1, a2, t2, delta = (p.detach() for p in (a1, t1, a2, t2, delta))
            base = images
            if linf > 0:
                up = F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=False)
                box_full = torch.ones(n, 1, h, w, device=self.device)
                for i, L in enumerate(lays):
                    box_full[i, :, L.y:L.y + L.bh, L.x:L.x + L.bw] = 0
                base = (images + up * box_full).clamp(0, 1)
            out = self.paste_full(base, les, lays, a1, t1, a2, t2)
            out = self.finish(images, out, les)
        secs = time.perf_counter() - t0
        params_out = [{
            "engine": self.name, "logo": logo_id, "box": [L.y, L.x, L.y + L.bh, L.x + L.bw],
            "alpha_max": a_max, "alpha_min": a_min, "plate_alpha_max": p_max, "iterations": iters,
            "linf": round(linf * 255, 3), "lesion": les_src, "seed": int(self.profile.seed),
            "surrogates": ens.names, "seconds": round(secs / n, 4),
        } for L in lays]
        return WatermarkBatch(images=out, params=params_out)
