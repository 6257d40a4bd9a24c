"""`miadmark train` and `miadmark evaluate` end to end on the tiny chest_xray28 set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from miadmark.cli import main
from miadmark.surrogates import surrogate_paths

NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray28" / "pneumoniamnist.npz"

pytestmark = pytest.mark.skipif(not NPZ.exists() or not surrogate_paths(), reason="needs shared data and weights")


def test_train_then_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("MIADMARK_CACHE", str(tmp_path / "cache"))
    import miadmark.surrogates.data as data

    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    out = tmp_path / "chest_resnet10.pt"
    assert main(["train", "--data", str(NPZ), "--arch", "resnet10", "--out", str(out), "--epochs", "1",
                 "--size", "28", "--device", "cpu", "--threads", "1"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["arch"] == "resnet10" and 0.0 <= meta["val_accuracy"] <= 1.0 and meta["n_val"] == 270
    assert "miadmark train" in meta["command"]
    rep_dir = tmp_path / "report"
    ref = tmp_path / "ref" / out.name  # the same model as a reference: scored apart, same numbers
    ref.parent.mkdir()
    ref.write_bytes(out.read_bytes())
    assert main(["evaluate", "--data", str(NPZ), "--profile", "cloak", "--models", str(out), "--out",
                 str(rep_dir), "--limit", "6", "--batch", "6", "--options", '{"iterations": 2}',
                 "--threads", "1", "--reference-models", str(ref), "--third-parties", "plain", "mark_inpainted",
                 "removal_unet", "--third-party-options", '{"removal_unet": {"steps": 2, "crop": 16}}',
                 "--own-images", "8", "--own-profile", "fast"]) == 0
    rep = json.loads((rep_dir / "report.json").read_text())
    tp = rep["third_parties"]
    assert list(tp) == ["plain", "mark_inpainted", "removal_unet"]
    assert list(tp["plain"]["models"]) == ["chest_resnet10"]
    assert tp["removal_unet"]["cost"]["images_protected"] == 8 and tp["removal_unet"]["cost"]["profile"] == "fast"
    assert rep["readability"]["lesion_pixels_changed"] == 0 and 0 < rep["readability"]["ssim_anatomy"] <= 1
    assert {r["target"] for r in rep["level_targets"]["standard"]} >= {"plain", "contrast_transmission"}
    assert "--own-images 8" in rep["command"] and (rep_dir / "ex0_triptych.png").exists()
    assert rep["accuracy_summary"]["reference_black_box"] == rep["accuracy_summary"]["black_box"]
    assert rep["accuracy_summary"]["models"]["black_box"] == ["chest_resnet10"]  # not among the targets' models
    assert "--reference-models" in rep["command"] and list(rep["reference_models"]) == ["chest_resnet10"]
    assert rep["quality"]["lesion_pixels_changed"] == 0
    assert rep["quality"]["box_area_fraction_max"] == 1.0  # the default level's spread mark spans the image
    assert set(rep["accuracy_summary"]["black_box"]) == {"clean", "plain_logo_same_box", "protected",
                                                         "protected_inpainted_telea", "protected_inpainted_ns"}
    assert set(rep["accuracy_summary"]["black_box"]["protected"]) == {"none", "jpeg_q75", "resize_half_and_back"}
    q = rep["quality"]
    assert 0.5 - 1e-6 <= q["contrast_transmission_in_box"] <= 1.0 + 1e-6 or q["contrast_transmission_in_box"] != \
        q["contrast_transmission_in_box"]  # see-through logo (nan: no anatomy in a 28 px box)
    low = q["psnr_outside_logo_db"]["min"]
    assert low is None or low != low or low >= 40.0  # nan: the spread mark leaves nothing outside its "box"
    assert rep["profile"]["design"] == "spread" and rep["targets"] == []  # box targets: the box design only
    assert (rep_dir / "report.html").exists() and list(rep_dir.glob("ex0_after.png"))


def test_report_command_names_every_setting_that_shaped_it():
    import argparse

    from miadmark.evaluate import _command

    args = argparse.Namespace(data="d", profile="transfer", out="o", limit=440, seed=0, models=None,
                              options='{"linf": 4}', max_area_fraction=0.25, alpha_max=0.6)
    assert _command(args).split() == ["miadmark", "evaluate", "--data", "d", "--profile", "transfer", "--out", "o",
                                      "--limit", "440", "--seed", "0", "--max-area-fraction", "0.25",
                                      "--options", "'{\"linf\":", "4}'"]
    args.max_area_fraction = 1 / 9
    assert "--max-area-fraction" not in _command(args)


def test_psnr_target_is_kept_when_nothing_changes_outside_the_box():
    from miadmark.evaluate import targets_table

    def quality(mean_finite, identical):
        return {"contrast_transmission_in_box": 0.9, "ssim_outside_logo": 1.0, "lesion_pixels_changed": 0,
                "psnr_outside_logo_db": {"mean_finite": mean_finite, "min": mean_finite,
                                         "images_identical_outside_logo": identical}}

    def psnr_row(q):
        return next(t for t in targets_table("brain_mri", {}, q) if t["target"] == "psnr_outside_box_db")

    assert psnr_row(quality(None, 96)) == {"target": "psnr_outside_box_db", "models": "", "bound": ">= 40.0",
                                           "value": "unchanged", "met": True}  # a plain logo: PSNR infinite
    assert psnr_row(quality(38.2, 0))["met"] is False and psnr_row(quality(40.6, 3))["met"] is True
