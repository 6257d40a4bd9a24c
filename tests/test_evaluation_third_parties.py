"""The third parties of `miadmark evaluate` and the readability metrics, each on tiny inputs (seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from miadmark.engine import ImageContext, Profile
from miadmark.evaluation import Arena, OwnImages, make_third_parties, parse_options
from miadmark.evaluation.adaptive import fine_tune
from miadmark.evaluation.inpainted import MarkInpainted, visible_change
from miadmark.evaluation.jpeg import Jpeg
from miadmark.evaluation.pictures import triptych
from miadmark.evaluation.readability import anatomy_mask, readability, ssim_per_image, transmission_per_image
from miadmark.evaluation.removal import UNet, train_step
from miadmark.evaluation.resize import Resize
from miadmark.evaluation.targets import level_targets
from miadmark.surrogates.data import Dataset
from miadmark.surrogates.models import build
from miadmark.surrogates.train import save


def anatomy_images(n: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    """A bright textured disc (the body) on black air."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).float()
    tex = 0.3 + 0.5 * torch.rand(n, 1, size, size, generator=g)
    return tex * disc


def test_transmission_is_one_untouched_and_half_for_a_half_blend_with_a_constant():
    x = anatomy_images()
    mask = anatomy_mask(x)
    assert transmission_per_image(x, x, mask) == pytest.approx([1.0] * 3)
    blend = 0.5 * x + 0.5 * 0.8
    assert transmission_per_image(x, blend, mask) == pytest.approx([0.5] * 3, abs=1e-6)
    assert ssim_per_image(x, x, mask) == pytest.approx([1.0] * 3, abs=1e-6)
    assert all(s < 0.9 for s in ssim_per_image(x, blend, mask))


def test_anatomy_mask_is_the_body_without_air_and_lesion():
    x = anatomy_images(1)
    lesion = torch.zeros(1, 48, 48, dtype=torch.bool)
    lesion[0, 22:26, 22:26] = True
    m = anatomy_mask(x, lesion)
    assert not m[0, 0, 0] and m[0, 24, 10] and not m[0, 23, 23]
    assert 0.25 < float(m.float().mean()) < 0.45  # the disc (pi/9 of the image) less the lesion


def test_readability_counts_lesion_pixels_and_psnr():
    x = anatomy_images(2)
    lesion = torch.zeros(2, 48, 48, dtype=torch.bool)
    lesion[:, 20:24, 20:24] = True
    out = x.clone()
    out[1, :, 21, 21] += 0.1  # one lesion pixel changed in image 1
    out[0] = torch.where(lesion[0], x[0], x[0] + 0.01)  # everything but the lesion, in image 0
    r = readability(x, out, lesion, 0.25)
    assert r["lesion_pixels_changed"] == 1 and r["images_unchanged"] == 0
    assert r["psnr_db_min"] == pytest.approx(10 * math.log10(1 / 0.0001), abs=0.2)
    assert r["contrast_transmission"] == pytest.approx(1.0, abs=1e-4) and r["seconds_per_image"] == 0.25


def test_options_are_typed_and_unknown_keys_refused():
    o = parse_options(Jpeg.Options, {"quality": "60", "models": ["a.pt"]}, "jpeg_q75")
    assert o.quality == 60 and o.models == ("a.pt",)
    with pytest.raises(ValueError, match="unknown option.*qualty"):
        parse_options(Jpeg.Options, {"qualty": 60}, "jpeg_q75")
    with pytest.raises(ValueError, match="true or false"):
        make_third_parties(["adaptive"], {"adaptive": {"with_clean": "no"}})
    with pytest.raises(ValueError, match="nobody"):
        make_third_parties(["plain", "nobody"], None)
    with pytest.raises(ValueError, match="careful"):  # options for a third party not selected
        make_third_parties(["plain"], {"careful": {}})
    assert [p.name for p in make_third_parties(None, None)] == ["plain", "careful", "careful_marks", "adaptive",
                                                                "removal_unet", "mark_inpainted", "jpeg_q75",
                                                                "resize_half"]


def test_inpainting_restores_the_mark_and_leaves_every_other_pixel_untouched():
    x = torch.full((1, 1, 40, 40), 0.4) + 0.05 * torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    marked = x.clone()
    marked[0, 0, 10:20, 10:20] = 0.9  # the visible mark
    marked[0, 0, 30, 30] += 2 / 255  # an imperceptible change stays
    party = MarkInpainted({"dilate": 0})
    out = party.view(marked, x)
    mask = visible_change(marked, x, 8.0, 0)
    assert int(mask.sum()) == 100 and not mask[0, 30, 30]
    assert torch.equal(out[~mask[:, None]], marked[~mask[:, None]])  # bit for bit off the mark
    assert float((out[0, 0, 10:20, 10:20] - 0.425).abs().max()) < 0.06  # painted from the surroundings
    assert party.cost["fraction_inpainted"] == pytest.approx(100 / 1600, abs=1e-4)
    assert torch.equal(party.view(x, x), x)  # nothing to paint on a clean image


def test_jpeg_and_resize_change_the_image_and_keep_its_shape():
    x = anatomy_images(2)
    for party in (Jpeg(), Resize()):
        v = party.view(x, x)
        assert v.shape == x.shape and 0 < float((v - x).abs().mean()) < 0.1


def test_removal_unet_trains_a_step_and_lowers_its_loss():
    torch.manual_seed(0)
    clean = anatomy_images(4, 32)
    marked = (0.7 * clean + 0.3 * 0.9).clamp(0, 1)
    net = UNet(1, 8)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = [train_step(net, opt, marked, clean) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]
    assert net(torch.rand(1, 1, 30, 34)).shape == (1, 1, 30, 34)  # any size, padded inside


def test_fine_tune_learns_what_protected_images_look_like():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = (0.2 + 0.6 * y.float()[:, None, None, None] * torch.ones(64, 1, 16, 16)) \
        + 0.05 * torch.rand(64, 1, 16, 16, generator=g)
    x = x.clamp(0, 1)
    model = build("resnet10", 1, 2, 16).eval()
    model.meta = {"in_size": 16, "in_ch": 1}
    tuned = fine_tune(model, x, y, epochs=4, lr=3e-3, batch=16, seed=0)
    with torch.no_grad():
        acc = float((tuned(x).argmax(1) == y).float().mean())
    assert acc >= 0.9 and not any(p.requires_grad for p in tuned.parameters())
    assert tuned is not model and tuned.meta["in_size"] == 16


def tiny_arena(tmp_path, n: int = 40, size: int = 32):
    labels = torch.arange(n) % 2
    images = (anatomy_images(n, size) * (0.6 + 0.4 * labels.float())[:, None, None, None] * 255).to(torch.uint8)
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[::4] = True
    ds = Dataset(name="tiny", classes=["a", "b"], images=images, labels=labels, is_val=is_val,
                 paths=[f"{i}.png" for i in range(n)])
    model = build("resnet10", 1, 2, 16)
    path = tmp_path / "tiny_resnet10.pt"
    save(model, {"arch": "resnet10", "in_ch": 1, "in_size": 16, "classes": ["a", "b"], "dataset": "tiny"}, path)
    arena = Arena(dataset=ds, profile=Profile(name="plain", alpha_max=0.5), context=ImageContext(modality="MR"),
                  eval_index=torch.nonzero(is_val).flatten(), own=OwnImages(n=12, seed=5), batch=8)
    return arena, path


def test_third_parties_train_only_on_their_own_images(tmp_path):
    arena, _ = tiny_arena(tmp_path)
    own = arena.own_protected()
    assert own["cost"]["images_protected"] == 12 and own["cost"]["profile"] == "plain"
    assert not (own["protected"] == own["clean"]).all()  # the tool marked them
    assert set(arena.training_index().tolist()).isdisjoint(arena.eval_index.tolist())
    arena.eval_index = torch.tensor([0, 1])  # an evaluation image from the training split: refused
    with pytest.raises(RuntimeError, match="evaluation images in the third party's training images"):
        arena.training_index()


def test_each_third_party_scores_its_models_on_clean_and_protected(tmp_path):
    arena, path = tiny_arena(tmp_path)
    clean = arena.dataset.images[arena.eval_index].float() / 255
    protected = (0.6 * clean + 0.4).clamp(0, 1)
    names = ["plain", "careful", "careful_marks", "adaptive", "removal_unet", "mark_inpainted", "jpeg_q75",
             "resize_half"]
    opts = {name: {"models": [str(path)]} for name in names}
    opts["careful_marks"].update(images=8, epochs=1, batch=4, cache=False)
    opts["removal_unet"].update(steps=3, batch=2, crop=16, width=4)
    opts["adaptive"].update(epochs=1, batch=8)
    parties = make_third_parties(names, opts)
    for party in parties:
        res = party.evaluate(arena, clean, protected)
        model = {"adaptive": "tiny_resnet10_adapted", "careful_marks": "tiny_resnet10_marks"}.get(party.name,
                                                                                                "tiny_resnet10")
        assert list(res["models"]) == [model], party.name
        for cond in ("clean", "protected"):
            assert 0.0 <= res["mean"][cond] <= 1.0 and res["mean"][cond] == res["models"][model][cond]
    marks, adaptive, removal = parties[2], parties[3], parties[4]
    # the fine-tune time is recorded (8 images can take under 0.05 s, which rounds to 0.0: no time is asserted)
    assert marks.cost["images_marked"] == 8 and marks.cost["tiny_resnet10_fine_tune_seconds"] >= 0
    assert removal.cost["images_protected"] == 12 and removal.cost["steps"] == 3
    assert adaptive.cost["images_protected"] == 12 and adaptive.cost["training_images"] == 24  # + clean copies


def test_level_targets_say_met_or_not():
    parties = {"plain": {"mean": {"clean": 0.9, "protected": 0.3}},
               "careful": {"mean": {"clean": 0.9, "protected": 0.6}}}
    rows = level_targets(parties, {"contrast_transmission": 0.8, "ssim_anatomy": 0.8})
    std = {r["target"]: r["met"] for r in rows["standard"]}
    assert std == {"plain": True, "careful": False, "contrast_transmission": True, "ssim_anatomy": False}
    assert {r["target"]: r["met"] for r in rows["strong"]}["plain"] is False
    bal = level_targets(parties, {}, balanced=True)
    assert bal["standard"][0]["bound"] == "<= 0.5x clean (0.450)" and bal["standard"][0]["met"] is True
    assert bal["strong"] == []


def test_triptych_puts_original_protected_and_difference_side_by_side():
    x = anatomy_images(1, 16)[0]
    p = (x + 0.1).clamp(0, 1)
    lesion = torch.zeros(16, 16, dtype=torch.bool)
    lesion[0, 0] = True
    t = triptych(x, p, lesion, gap=2)
    assert t.shape == (1, 16, 52)
    assert torch.equal(t[:, :, :16], x) and torch.equal(t[:, :, 18:34], p) and float(t[0, 0, 36]) == 0.5


def test_frontier_writes_tables_plot_and_pictures(tmp_path):
    import json

    from PIL import Image

    from miadmark.evaluation.frontier import main as frontier

    def report(folder, transmission, plain):
        folder.mkdir()
        Image.new("L", (20, 8)).save(folder / "ex0_triptych.png")
        tp = {"plain": {"mean": {"clean": 0.9, "protected": plain}}}
        read = {"contrast_transmission": transmission, "ssim_anatomy": transmission, "psnr_db": 30.0,
                "fraction_pixels_changed": 0.5, "lesion_pixels_changed": 0, "seconds_per_image": 0.1}
        (folder / "report.json").write_text(json.dumps({
            "data": "brain_mri", "n_images": 48, "third_parties": tp, "readability": read,
            "level_targets": level_targets(tp, read), "examples": [{"triptych": "ex0_triptych.png"}]}))
        return folder

    a, b = report(tmp_path / "a", 0.95, 0.8), report(tmp_path / "b", 0.7, 0.3)
    assert frontier(["--out", str(tmp_path / "f"), f"box={a}", f"spread 0.15={b}"]) == 0
    md = (tmp_path / "f" / "frontier_tables.md").read_text()
    assert "| clean (no mark) | 1.000 | 1.000 | | 0 | 0 | | 0.900 |" in md
    assert "| spread 0.15 | 0.700 | 0.700 | 30.000 | 0.500 | 0 | 0.100 | 0.300 |" in md
    assert "| spread 0.15 | standard | plain 0.300 | contrast_transmission 0.700 (>= 0.75)" in md
    assert Image.open(tmp_path / "f" / "frontier_brain_mri.png").size[0] > 500
    assert (tmp_path / "f" / "brain_mri_spread_0.15_ex0.png").exists()


def test_careful_marks_trains_under_random_marks_of_every_level():
    from miadmark.evaluation.careful_marks import random_level_mark

    x = anatomy_images(4, 32)
    mark = random_level_mark(torch.Generator().manual_seed(0))
    outs = [mark(x, torch.Generator().manual_seed(k)) for k in range(6)]
    assert all(o.shape == x.shape and not torch.equal(o, x) for o in outs)
    assert len({round(float((o - x).abs().mean()), 4) for o in outs}) > 1  # marks differ from draw to draw
