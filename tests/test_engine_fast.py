"""Profile `fast` (one generator pass, miadmark.engine.fast) and `auto`: the constraints hold on its output
(alpha cap in the box, cloak budget / PSNR, lesion untouched), it is deterministic and runs on the CPU,
`miadmark protect --profile fast` then `strip` gives the original bit for bit on real DICOM of the three
routes, and a missing generator fails closed with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydicom.data import get_testdata_file
from test_engine_constraints import disk, head

from miadmark.cli import main
from miadmark.dicomio import read_dicom
from miadmark.engine import AUTO, PROFILE_NAMES, Profile, get_engine, resolve_profile
from miadmark.engine import constraints as C
from miadmark.engine.generator import GeneratorMissingError, WatermarkGenerator, generator_path, load_generator
from miadmark.protect import protect_many
from miadmark.surrogates import CHEST_SURROGATES, DEFAULT_SURROGATES, SKIN_SURROGATES, WEIGHTS_DIR

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
GENERATORS = {"brain_mri": DEFAULT_SURROGATES, "chest_xray_224": CHEST_SURROGATES, "skin_ham10000": SKIN_SURROGATES}


def test_each_family_has_its_committed_generator():
    for dataset, names in GENERATORS.items():
        path = generator_path(names)
        assert path == WEIGHTS_DIR / f"generator_{dataset}.pt"
        assert path.stat().st_size < 2_000_000  # fp16, a few hundred KB
        assert "miadmark train-generator" in path.with_suffix(".json").read_text()  # the command that made it


def test_fast_keeps_the_constraints_and_the_lesion():
    x = head(2, 1, 96)
    lesion = disk(2, 96, 40, 50, 12)
    res = get_engine(Profile(name="fast", strength="discreet"), "cpu").watermark(x, lesion, [])
    assert res.images.shape == x.shape and res.images.dtype == torch.float32 and res.images.device.type == "cpu"
    assert torch.equal(res.images[:, 0][lesion], x[:, 0][lesion])
    boxes = [p["box"] for p in res.params]
    assert C.violations(x, res.images, lesion, boxes, C.Budget(), tol=1e-6) == []
    inside = C.box_mask(2, 96, 96, boxes)
    assert not bool((inside & lesion).any())  # the box is off the lesion
    assert bool(((res.images != x)[:, 0] & ~inside).any())  # the cloak is there
    d = (res.images - x)[:, 0]
    assert float(d[inside].abs().max()) > 0.05  # the logo is visible
    # see-through: every box pixel keeps at least half of the original
    assert bool((res.images[:, 0][inside] >= 0.5 * x[:, 0][inside] - 1e-6).all())
    assert res.params[0]["engine"] == "fast" and res.params[0]["surrogates"] == DEFAULT_SURROGATES
    assert res.params[0]["generator"].startswith("generator_brain_mri@")  # the weights' name and hash


def test_fast_is_deterministic_and_runs_rgb_on_cpu():
    x = head(2, 1, 80)
    a = get_engine(Profile(name="fast", strength="discreet"), "cpu").watermark(x, None, [])
    b = get_engine(Profile(name="fast", strength="discreet"), "cpu").watermark(x, None, [])
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert [p["box"] for p in a.params] == [p["box"] for p in b.params]
    rgb = head(1, 3, 72)
    eng = get_engine(Profile(name="fast", strength="discreet", options={"surrogates": SKIN_SURROGATES}), "cpu")
    res = eng.watermark(rgb, None, [])
    assert res.images.shape == rgb.shape
    assert C.violations(rgb, res.images, torch.zeros(1, 72, 72, dtype=torch.bool),
                        [p["box"] for p in res.params], C.Budget(), tol=1e-6) == []


def test_auto_is_fast_on_cpu_and_the_default_on_a_gpu(monkeypatch):
    assert AUTO in PROFILE_NAMES and "fast" in PROFILE_NAMES
    assert resolve_profile(AUTO, "cpu") == "fast"
    assert resolve_profile(None, "cpu") == "fast" and resolve_profile("", "cpu") == "fast"  # the default is auto
    assert resolve_profile("plain", "cpu") == "plain"
    eng = get_engine(AUTO, "cpu")
    assert eng.name == "fast" and eng.profile.name == "fast"  # what the record names
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_profile(AUTO, "auto") == "cloak" and resolve_profile(AUTO, "cuda") == "cloak"
    assert resolve_profile(None, "auto") == "cloak"


def test_missing_generator_fails_closed_with_a_clear_error(tmp_path, monkeypatch, site_keys):
    gone = tmp_path / "generator_gone.pt"
    with pytest.raises(GeneratorMissingError, match="generator_gone.pt"):
        load_generator(gone, torch.device("cpu"))
    ds = read_dicom(get_testdata_file("MR_small.dcm"))
    out = protect_many([ds], recipients=[site_keys["research"].cert], signer=site_keys["hospital"],
                       profile=Profile(name="fast", options={"generator": str(gone)}), device="cpu")
    assert isinstance(out[0], Exception) and "generator_gone.pt" in str(out[0])  # no unprotected image
    monkeypatch.setattr("miadmark.surrogates.WEIGHTS_DIR", tmp_path)  # no committed generator at all
    with pytest.raises(GeneratorMissingError, match="no generator weights for surrogates brain_mri_resnet10"):
        generator_path(DEFAULT_SURROGATES)


def test_a_corrupt_generator_file_is_refused(tmp_path):
    bad = tmp_path / "generator_bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(GeneratorMissingError, match="generator_bad.pt"):
        load_generator(bad, torch.device("cpu"))


def test_generator_shapes_and_fp16_round_trip(tmp_path):
    from miadmark.engine.generator import save_generator

    net = WatermarkGenerator(3, 3, 8, universal=90)
    with torch.no_grad():
        net.universal.normal_()  # the learned image-independent part
    assert net(torch.rand(2, 4, 90, 90)).shape == (2, 5, 90, 90)  # S need not be a multiple of 8
    save_generator(net, {"in_size": 90, "surrogates": ["x"]}, tmp_path / "g.pt")
    back = load_generator(tmp_path / "g.pt", torch.device("cpu"))
    assert back.meta["width"] == 8 and back.meta["universal"] == 90 and not back.training
    x = torch.rand(1, 4, 90, 90)
    assert torch.allclose(back(x), net.eval()(x), atol=1e-2)


def test_training_steps_run_through_the_same_compose():
    from miadmark.engine.ensemble import Ensemble
    from miadmark.engine.train_generator import train_generator

    ens = Ensemble.get(DEFAULT_SURROGATES, torch.device("cpu"))
    xs = head(8, 1, ens.size)
    ys = torch.zeros(8, dtype=torch.long)
    net, run = train_generator(ens, xs, ys, steps=2, batch=4, width=8, progress=False)
    assert run["steps_done"] == 2 and not net.training
    assert any(float(p.abs().sum()) > 0 for p in net.out.parameters())  # the zero-initialized head moved


def protect_then_strip(tmp_path: Path, src: Path, site_keys) -> tuple[Path, Path]:
    hk, hc = site_keys["hospital_paths"]
    rk, rc = site_keys["research_paths"]
    prot, clean = tmp_path / "protected", tmp_path / "clean"
    assert main(["protect", str(src), "--out", str(prot), "--recipient", str(rc), "--sign-key", str(hk),
                 "--sign-cert", str(hc), "--profile", "fast", "--device", "cpu", "--no-progress"]) == 0
    out = prot / src.name
    assert main(["strip", str(out), "--out", str(clean), "--key", str(rk), "--cert", str(rc),
                 "--trust", str(hc), "--no-progress"]) == 0
    return out, clean / src.name


@pytest.mark.parametrize("src", [
    DATA / "ct_chest_lidc0314" / "data" / "000090.dcm",  # CT: the brain-MRI family
    Path(get_testdata_file("RG1_UNCR.dcm")),  # CR 1955x1841: the chest X-ray family
    DATA / "transfer_syntaxes" / "LittleEndianExplicit" / "SC_rgb.dcm",  # RGB: the dermoscopy family
], ids=["CT", "CR", "RGB"])
def test_cli_protect_fast_then_strip_is_bit_exact(tmp_path, site_keys, src):
    protected, stripped = protect_then_strip(tmp_path, src, site_keys)
    prot = read_dicom(protected)
    assert "profile fast" in str(prot.DerivationDescription)
    assert prot.PixelData != read_dicom(src).PixelData
    assert stripped.read_bytes() == src.read_bytes()


def test_cli_protect_auto_on_cpu_records_fast(tmp_path, site_keys):
    hk, hc = site_keys["hospital_paths"]
    src = Path(get_testdata_file("MR_small.dcm"))
    args = ["protect", str(src), "--recipient", str(site_keys["research_paths"][1]), "--sign-key", str(hk),
            "--sign-cert", str(hc), "--device", "cpu", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a"), "--profile", "auto"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--profile", "fast"]) == 0
    a, b = read_dicom(tmp_path / "a" / src.name), read_dicom(tmp_path / "b" / src.name)
    assert "profile fast" in str(a.DerivationDescription)
    assert a.PixelData == b.PixelData  # same input, same watermark, byte for byte


def test_services_load_auto_as_the_engine_it_means():
    from miadmark import loaded  # what the gateway, the Orthanc plugin and the release load engines through

    eng = loaded.engine(AUTO, "cpu")
    assert eng is loaded.engine("fast", "cpu") and eng.profile.name == "fast"
