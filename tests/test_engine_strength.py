"""Strength levels (constraints.LEVELS) and the spread mark, in seconds: each level's invariants on the engine's
output (opacity cap at every pixel, coverage, cloak budget off the mark, lesion untouched), per-image keyed
geometry, determinism with a seed, typed options (unknown keys refused), strength in the rules and the CLI,
and protect -> strip bit for bit on a real CT slice and an RGB file at standard and strong."""

from __future__ import annotations

from dataclasses import replace

import pydicom
import pytest
import torch
from conftest import DICOM_DATA
from pydicom.data import get_testdata_file
from test_engine_constraints import disk, head
from test_engine_modalities import dermoscopy_dicom

from miadmark.config import ConfigError, parse_config
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, read_dicom
from miadmark.engine import (DEFAULT_STRENGTH, STRENGTHS, ImageContext, Profile, get_engine, profile_spec,
                             resolve_profile, split_spec)
from miadmark.engine import constraints as C
from miadmark.engine.options import parse_options
from miadmark.engine.spread import random_mark
from miadmark.engine.spread_key import mark_key
from miadmark.protect import open_record, protect, strip
from miadmark.rules import decide

torch.set_num_threads(1)
QUICK = {"iterations": 2, "candidates": 2}
SPREAD = ("standard", "strong")
CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))


def contexts(n: int, prefix: str = "1.2.826.0.1.3680043.8.498.1") -> list[ImageContext]:
    return [ImageContext(modality="MR", photometric="MONOCHROME2", sop_instance_uid=f"{prefix}.{i}") for i in range(n)]


def test_the_levels_table_is_ordered_and_standard_is_the_default():
    assert STRENGTHS == tuple(C.LEVELS) == ("discreet", "standard", "strong") and DEFAULT_STRENGTH == "standard"
    d, s, g = (C.LEVELS[k] for k in STRENGTHS)
    assert d.design == "box" and s.design == g.design == "spread"
    assert d.psnr_min == 40.0 and s.alpha_cap < g.alpha_cap and s.coverage_max <= g.coverage_max
    assert g.psnr_min <= s.psnr_min
    with pytest.raises(ValueError, match="unknown strength 'loud'"):
        C.level_of("loud")


@pytest.mark.parametrize("strength", SPREAD)
def test_spread_level_keeps_its_budget_on_every_pixel(strength):
    x = head(2, 1, 96)
    lesion = disk(2, 96, 40, 50, 12)
    ctx = contexts(2)
    eng = get_engine(Profile(name="cloak", strength=strength, options=QUICK), "cpu")
    res = eng.watermark(x, lesion, ctx)
    lv, budget = C.LEVELS[strength], eng.budget()
    assert (budget.alpha_cap, budget.max_area_fraction, budget.psnr_min) == (lv.alpha_cap, lv.coverage_max,
                                                                             lv.psnr_min)
    mark = eng.marks(x, lesion, ctx).support
    assert C.violations_mark(x, res.images, lesion, mark, budget, tol=1e-6) == []
    # the same invariants spelt out: lesion untouched, coverage, opacity cap on the mark, cloak off it
    assert int((res.images != x)[:, 0][lesion].sum()) == 0 and not bool((mark & lesion).any())
    cover = mark.flatten(1).float().mean(1)
    assert bool((cover <= lv.coverage_max).all()) and bool((cover > 0.1).all())
    on = mark[:, None]
    k = 1 - lv.alpha_cap
    assert bool(((res.images >= k * x - 1e-6) & (res.images <= k * x + lv.alpha_cap + 1e-6))[on].all())
    d = (res.images - x)[~on]
    assert float(d.abs().max()) <= lv.cloak_linf / 255 + 1e-6
    psnr = 10 * torch.log10(1 / (d ** 2).mean())
    assert float(psnr) >= lv.psnr_min - 0.05 and bool((d != 0).any())  # the cloak is there, within its PSNR
    p = res.params[0]
    assert (p["design"], p["strength"], p["alpha_cap"], p["engine"]) == ("spread", strength, lv.alpha_cap, "cloak")
    assert 0 < p["coverage"] <= lv.coverage_max


def test_discreet_is_the_box_design_with_its_budget():
    x = head(1, 1, 96)
    lesion = disk(1, 96, 40, 50, 12)
    eng = get_engine(Profile(name="cloak", strength="discreet", options=QUICK), "cpu")
    res = eng.watermark(x, lesion, [])
    assert res.params[0]["design"] == "box" and res.params[0]["alpha_cap"] == 0.5
    assert C.violations(x, res.images, lesion, [res.params[0]["box"]], eng.budget(), tol=1e-6) == []
    assert int((res.images != x)[:, 0][lesion].sum()) == 0


def test_geometry_is_keyed_per_image_and_deterministic_with_a_seed():
    x = head(2, 1, 96)
    lesion = torch.zeros(2, 96, 96, dtype=torch.bool)
    eng = get_engine(Profile(name="cloak", seed=5, options=QUICK), "cpu")
    one, other = eng.marks(x, lesion, contexts(2, "1.2.3")), eng.marks(x, lesion, contexts(2, "1.2.4"))
    assert not torch.equal(one.support[0], one.support[1])  # two images of a batch
    assert one.geometry[0] != other.geometry[0] and not torch.equal(one.strokes[0], other.strokes[0])  # two UIDs
    assert torch.equal(one.strokes, eng.marks(x, lesion, contexts(2, "1.2.3")).strokes)
    a = eng.watermark(x, lesion, contexts(2))
    b = get_engine(Profile(name="cloak", seed=5, options=QUICK), "cpu").watermark(x, lesion, contexts(2))
    assert torch.equal(a.images, b.images)
    # the product's key: HMAC of the site secret, instance and frame
    assert mark_key(b"s" * 32, "1.2.3", 0) != mark_key(b"s" * 32, "1.2.3", 1) != mark_key(b"t" * 32, "1.2.3", 1)
    keyed = [ImageContext(modality="MR", sop_instance_uid="1.2.3", mark_key=mark_key(b"s" * 32, "1.2.3", f))
             for f in range(2)]
    assert eng.marks(x, lesion, keyed).geometry[0] != one.geometry[0]


def test_unknown_or_mistyped_options_are_refused_with_the_key_named():
    with pytest.raises(ValueError, match="unknown option 'iteration' for profile cloak"):
        get_engine(Profile(name="cloak", options={"iteration": 60}), "cpu")
    with pytest.raises(ValueError, match="'population'"):
        parse_options("transfer", {"population": 3})
    with pytest.raises(ValueError, match="option 'iterations'"):
        parse_options("cloak", {"iterations": "many"})
    with pytest.raises(ValueError, match="unknown option 'anything' for profile plain"):
        get_engine(Profile(name="plain", options={"anything": 1}), "cpu")
    assert parse_options("cloak", {"iterations": 60}).iterations == 60
    assert parse_options("cloak", {}).iterations == 30 and parse_options("fast", {}).alpha_min == 0.25


def test_evaluate_refuses_a_misspelt_option_before_any_work(tmp_path):
    from miadmark.cli import main

    with pytest.raises((SystemExit, ValueError)) as err:
        rc = main(["evaluate", "--data", "/nonexistent", "--profile", "cloak", "--out", str(tmp_path),
                   "--options", '{"iteration": 60}'])
        raise SystemExit(rc)
    assert "iteration" in str(err.value) or err.value.code not in (0, None)


def test_profile_specs_carry_the_strength_through_the_ways_out():
    assert profile_spec("auto", "strong") == "auto:strong" and profile_spec(None, None) is None
    assert split_spec(":discreet") == (None, "discreet") and split_spec("cloak") == ("cloak", None)
    assert resolve_profile("auto:strong", "cpu") == "fast:strong"
    assert resolve_profile(":strong", "cpu") == "fast:strong"  # the default profile is auto
    eng = get_engine("cloak:strong", "cpu")
    assert (eng.name, eng.profile.strength) == ("cloak", "strong")
    with pytest.raises(ValueError, match="unknown strength"):
        split_spec("cloak:loud")


def test_the_ways_out_get_the_rule_strength_through_loaded_engines():
    from miadmark import loaded

    loaded.forget()
    eng = loaded.engine(":strong", "cpu")  # a rule with strength and no profile (the gateway, plugin, release)
    assert (eng.name, eng.profile.strength) == ("fast", "strong")  # the default, auto, on a CPU
    assert loaded.engine("cloak:strong", "cpu").profile.strength == "strong"
    assert loaded.engine("auto:discreet", "cpu").profile.strength == "discreet"
    assert loaded.engine(None, "cpu").profile.strength is None  # the default level
    loaded.forget()


def test_strength_in_the_rules(tmp_path):
    cert = tmp_path / "r.pem"
    cert.write_text("x")
    base = ("identity: {key: r.pem, cert: r.pem}\n"
            "destinations:\n  research: {ae_title: R, host: localhost, port: 104}\nrules:\n"
            "  - {action: protect, send_to: [research], recipients: [r.pem]%s}\n")
    cfg = parse_config(base % ", strength: strong", base=tmp_path)
    assert cfg.rules[0].strength == "strong"
    dec = decide(cfg, None, destination="research")
    assert dec.strength == "strong" and dec.profile == ":strong"
    assert decide(parse_config(base % "", base=tmp_path), None, destination="research").profile is None
    with pytest.raises(ConfigError, match="unknown strength 'loud'"):
        parse_config(base % ", strength: loud", base=tmp_path)
    with pytest.raises(ConfigError, match="strength is only for action protect"):
        parse_config("destinations:\n  research: {ae_title: R, host: localhost, port: 104}\nrules:\n"
                     "  - {action: pass, send_to: [research], strength: strong}\n", base=tmp_path)


def test_random_mark_of_each_level_for_careful_training():
    x = head(2, 1, 96)
    for strength in STRENGTHS:
        out = random_mark(x, strength, torch.Generator().manual_seed(1))
        assert out.shape == x.shape and not torch.equal(out, x) and float(out.min()) >= 0 and float(out.max()) <= 1
        if strength != "discreet":
            k = 1 - C.LEVELS[strength].alpha_cap
            assert bool(((out >= k * x - C.LEVELS[strength].cloak_linf / 255 - 1e-6)).all())


def test_fast_serves_the_committed_spread_generator_else_the_box_design_and_says_so():
    from miadmark.surrogates import CHEST_SURROGATES

    x = head(1, 1, 96)
    brain = get_engine(Profile(name="fast"), "cpu").watermark(x, None, contexts(1)).params[0]  # `auto` on a CPU
    assert (brain["design"], brain["strength"], brain["fallback"]) == ("spread", "standard", None)
    assert brain["generator"].startswith("generator_brain_mri_spread@")
    eng = get_engine(Profile(name="fast", strength="strong", options={"surrogates": list(CHEST_SURROGATES)}), "cpu")
    p = eng.watermark(x, None, []).params[0]  # no spread generator for the chest surrogates
    assert (p["design"], p["strength"], p["strength_asked"]) == ("box", "discreet", "strong") and p["fallback"]


def test_fast_serves_a_spread_level_with_a_spread_generator_within_its_budget(tmp_path):
    from miadmark.engine.generator import WatermarkGenerator, save_generator
    from miadmark.surrogates import DEFAULT_SURROGATES

    torch.manual_seed(0)
    net = WatermarkGenerator(1, 1, 8, 64)
    torch.nn.init.normal_(net.out.weight, std=0.5)  # an untrained net that still paints something
    path = tmp_path / "generator_spread.pt"
    save_generator(net, {"name": "generator_test_spread", "design": "spread", "in_size": 64,
                         "surrogates": list(DEFAULT_SURROGATES)}, path)
    x, lesion, ctx = head(2, 1, 96), disk(2, 96, 40, 50, 12), contexts(2)
    eng = get_engine(Profile(name="fast", strength="strong", options={"generator": str(path)}), "cpu")
    res = eng.watermark(x, lesion, ctx)
    p = res.params[0]
    assert (p["design"], p["strength"], p["fallback"]) == ("spread", "strong", None)
    budget = C.level_budget("strong", {}, 1 / 9)
    mark = get_engine(Profile(name="cloak", strength="strong"), "cpu").marks(x, lesion, ctx).support  # same lattice
    assert C.violations_mark(x, res.images, lesion, mark, budget, tol=1e-6) == []
    assert int((res.images != x)[:, 0][lesion].sum()) == 0 and bool((res.images != x).any())


@pytest.mark.parametrize("strength", SPREAD)
def test_protect_strip_bit_exact_ct_and_rgb(strength, site_keys, shared_data):
    hospital, research = site_keys["hospital"], site_keys["research"]
    jpg = sorted((shared_data / "skin_ham10000" / "mel").glob("*.jpg"))[0]
    engine = get_engine(Profile(name="cloak", strength=strength, options=QUICK), "cpu")
    for original in (read_dicom(CT[0]), dermoscopy_dicom(jpg)):
        result = dataset_from_bytes(dataset_to_bytes(protect(original, recipients=[research.cert], signer=hospital,
                                                             engine=engine)))
        assert result.PixelData != original.PixelData
        record = open_record(result, [research])
        assert record.params["strength"] == strength and record.params["frames"][0]["design"] == "spread"
        stripped = strip(result, keyring=[research], trust=[hospital.cert])
        assert dataset_to_bytes(stripped) == dataset_to_bytes(original)


def test_cli_protect_takes_strength(tmp_path, site_keys):
    from miadmark.cli import main

    src = tmp_path / "in"
    src.mkdir()
    pydicom.dcmread(get_testdata_file("MR_small.dcm")).save_as(src / "mr.dcm")
    key, cert = site_keys["hospital_paths"]
    rc = main(["protect", str(src), "--out", str(tmp_path / "out"), "--recipient", str(site_keys["research_paths"][1]),
               "--sign-key", str(key), "--sign-cert", str(cert), "--strength", "discreet", "--profile", "cloak",
               "--device", "cpu"])
    assert rc == 0
    out = read_dicom(next((tmp_path / "out").rglob("*.dcm")))
    assert open_record(out, [site_keys["research"]]).params["strength"] == "discreet"


def test_spread_generator_training_steps_keep_the_level_budget():
    from miadmark.engine.ensemble import Ensemble
    from miadmark.engine.options import SpreadOptions
    from miadmark.engine.train_spread import generated, mark_bank, train_spread
    from miadmark.surrogates import DEFAULT_SURROGATES

    ens = Ensemble.get(list(DEFAULT_SURROGATES), torch.device("cpu"))
    xs = head(8, 1, ens.size)
    ys = torch.arange(8) % len(ens.classes)
    net, run, (budget, opts) = train_spread(ens, xs, ys, "strong", steps=2, batch=4, bank=8, progress=False)
    assert run["steps_done"] == 2 and budget.alpha_cap == C.LEVELS["strong"].alpha_cap and opts == SpreadOptions()
    strokes, support = mark_bank(4, ens.size, budget, opts, seed=3)
    with torch.no_grad():
        out = generated(net, xs[:4], strokes, support, budget, opts)
    none = torch.zeros(4, ens.size, ens.size, dtype=torch.bool)
    # at S the mark's pixels are max-pooled from 224 px (wider); coverage is checked at full resolution
    at_s = replace(budget, max_area_fraction=1.0)
    assert C.violations_mark(xs[:4], out, none, support[:, 0] > 0, at_s, tol=1e-6) == []
    with pytest.raises(ValueError, match="not a spread level"):
        from miadmark.engine.train_spread import make_spread_generator
        make_spread_generator("../shared/data/brain_mri", None, "/nonexistent.pt", "discreet")


def test_a_rule_strength_reaches_the_record_through_the_one_export_step(tmp_path, site_keys):
    """The gateway, the Orthanc plugin and the release all protect through miadmark.export with the rule's
    Decision: the rule's strength is what the record says was used."""
    from miadmark.export import Protected, export_one

    key, cert = site_keys["hospital_paths"]
    text = (f"identity: {{key: {key}, cert: {cert}}}\n"
            "destinations:\n  research: {ae_title: R, host: localhost, port: 104}\nrules:\n"
            f"  - {{action: protect, send_to: [research], recipients: [{site_keys['research_paths'][1]}], "
            "strength: strong}\n")
    decision = decide(parse_config(text, base=tmp_path), None, destination="research")
    out = export_one(read_dicom(get_testdata_file("MR_small.dcm")), decision, destination="research",
                     signer=site_keys["hospital"], device="cpu")
    assert isinstance(out, Protected)
    params = open_record(out.dataset, [site_keys["research"]]).params
    assert params["strength"] == "strong" and params["profile"] == "fast"  # auto on a CPU
    frame = params["frames"][0]
    assert frame["design"] == "spread" and frame["alpha_cap"] == C.LEVELS["strong"].alpha_cap
