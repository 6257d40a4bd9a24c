"""`paper`: the faithful MIAD-MARK baseline. A plain visible logo blended x' = (1 - a*M) x + a*M*L,
its position (u, v) and transparency a found per image by Basin Hopping Evolution (BHE: local basin
hopping steps plus differential-evolution crossover over a population), query-based against the
surrogate ensemble (only output probabilities are used, no gradients). Transparency is capped
(Profile.alpha_max, as in Adv-watermark); the logo box never covers the lesion mask (given, else
Grad-CAM of the surrogates thresholded at cam_threshold on a 0-255 scale, default 140).

Options: population (8), generations (5), alpha_min (0.3), step_pos (4 surrogate pixels),
step_alpha (0.08), de_f (0.6), de_cr (0.7), cam_threshold (140), surrogates (names).
"""

from __future__ import annotations

import math
import time

import torch

from .adversarial import AdversarialEngine, Layout, box_sums, contexts_ok, integral
from .base import ImageContext, WatermarkBatch
from .logo import box_size


class PaperEngine(AdversarialEngine):
    name = "paper"

    def _watermark(self, images: torch.Tensor, lesion: torch.Tensor | None,
                   contexts: list[ImageContext]) -> WatermarkBatch:
        t0 = time.perf_counter()
        n, c, h, w = images.shape
        contexts_ok(contexts, n)
        images = images.to(self.device, torch.float32)
        ens = self.ensemble
        S = ens.size
        gen = torch.Generator().manual_seed(int(self.profile.seed))
        P = int(self.opt("population", 8))
        G = int(self.opt("generations", 5))
        a_max = float(self.profile.alpha_max)
        a_min = min(a_max, float(self.opt("alpha_min", 0.3)))
        sp, sa = float(self.opt("step_pos", 4)), float(self.opt("step_alpha", 0.08))
        de_f, de_cr = float(self.opt("de_f", 0.6)), float(self.opt("de_cr", 0.7))

        with torch.no_grad():
            les, les_src = self.lesion_mask(images, lesion)
            g = images.mean(1, keepdim=True)
            xs = ens.prep(g)
            y = self.pseudo_labels(xs)
            bh, bw = box_size(h, w, self.profile.max_area_fraction)
            hs, ws = max(2, math.floor(bh * S / h)), max(2, math.floor(bw * S / w))
            m, tex, logo_id = self.logo_low(hs, ws, bh, bw)
            ny, nx = S - hs + 1, S - ws + 1
            gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            fy = (gy.flatten() * h / S).floor().long().clamp(max=h - bh)
            fx = (gx.flatten() * w / S).floor().long().clamp(max=w - bw)
            bad = box_sums(integral(les.cpu()), fy, fx, bh, bw).view(n, ny, nx)
            feasible = bad == 0
            for i in range(n):  # no lesion-free position: allow the least-overlapping ones (mask zeroed there)
                if not bool(feasible[i].any()):
                    feasible[i] = bad[i] == bad[i].min()

            def lay(i, u, v):
                return Layout(int(fy[u * nx + v]), int(fx[u * nx + v]), bh, bw, u, v, hs, ws)

            def fitness(pos: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
                """pos (n, P, 2) long, alpha (n, P) -> probability of the clean label (lower = better)."""
                k = pos.shape[1]
                ok = feasible[torch.arange(n)[:, None], pos[..., 0], pos[..., 1]]
                lays = [lay(i, int(pos[i, j, 0]), int(pos[i, j, 1])) for j in range(k) for i in range(n)]
                a = alpha.t().reshape(-1)[:, None, None].expand(-1, hs, ws)
                xa = self.paste_low(xs.repeat(k, 1, 1, 1), lays, m, a, tex.expand(n * k, 1, hs, ws))
                prob = ens.predict(xa.clamp(0, 1)).gather(1, y.repeat(k)[:, None])[:, 0].view(k, n).t()
                return torch.where(ok, prob, torch.full_like(prob, 2.0))

            def clamp_pos(p):
                return torch.stack([p[..., 0].clamp(0, ny - 1), p[..., 1].clamp(0, nx - 1)], -1)

            # initial population: random feasible positions, random transparency under the cap
            pos = torch.zeros(n, P, 2, dtype=torch.long)
            for i in range(n):
                idx = feasible[i].flatten().nonzero()[:, 0]
                pick = idx[torch.randint(len(idx), (P,), generator=gen)]
                pos[i, :, 0], pos[i, :, 1] = pick // nx, pick % nx
            alpha = a_min + (a_max - a_min) * torch.rand(n, P, generator=gen)
            fit = fitness(pos, alpha)
            queries = P
            for _ in range(G):
                # basin hopping: a random local hop of every member, kept when it lowers the fitness
                hop = torch.round(torch.randn(n, P, 2, generator=gen) * sp).long()
                cpos = clamp_pos(pos + hop)
                calpha = (alpha + torch.randn(n, P, generator=gen) * sa).clamp(a_min, a_max)
                cfit = fitness(cpos, calpha)
                better = cfit < fit
                pos = torch.where(better[..., None], cpos, pos)
                alpha = torch.where(better, calpha, alpha)
                fit = torch.where(better, cfit, fit)
                # evolution: DE/best/1 mutation + binomial crossover, greedy selection
                best = fit.argmin(1)
                r1 = torch.randint(P, (n, P), generator=gen)
                r2 = torch.randint(P, (n, P), generator=gen)
                ar = torch.arange(n)[:, None]
                bpos = pos[torch.arange(n), best][:, None].float()
                balpha = alpha[torch.arange(n), best][:, None]
                mpos = bpos + de_f * (pos[ar, r1] - pos[ar, r2]).float()
                malpha = balpha + de_f * (alpha[ar, r1] - alpha[ar, r2])
                cross = torch.rand(n, P, 3, generator=gen) < de_cr
                cpos = clamp_pos(torch.where(cross[..., :2], mpos.round().long(), pos))
                calpha = torch.where(cross[..., 2], malpha, alpha).clamp(a_min, a_max)
                cfit = fitness(cpos, calpha)
                better = cfit < fit
                pos = torch.where(better[..., None], cpos, pos)
                alpha = torch.where(better, calpha, alpha)
                fit = torch.where(better, cfit, fit)
                queries += 2 * P
            best = fit.argmin(1)
            lays = [lay(i, int(pos[i, best[i], 0]), int(pos[i, best[i], 1])) for i in range(n)]
            a_best = alpha[torch.arange(n), best]
            a_map = a_best[:, None, None].expand(n, hs, ws).to(self.device)
            out = self.paste_full(images, les, lays, a_map, tex.expand(n, 1, hs, ws))
            out = self.finish(images, out, les)
        secs = time.perf_counter() - t0
        return WatermarkBatch(images=out, params=[{
            "engine": self.name, "logo": logo_id, "box": [L.y, L.x, L.y + L.bh, L.x + L.bw],
            "alpha": round(float(a_best[i]), 4), "alpha_max": a_max, "queries": queries, "lesion": les_src,
            "seed": int(self.profile.seed), "surrogates": ens.names, "seconds": round(secs / n, 4),
        } for i, L in enumerate(lays)])
