"""protect_many / protect_iter as a pipeline (decode, engine, record and encode in overlapping stages): every input
gets exactly one result, in its place; a bad input fails alone; the batch size changes nothing in the output
beyond float rounding;
every result strips back to its original file."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, read_dicom
from miadmark.engine import get_engine
from miadmark.errors import MiadmarkError
from miadmark.protect import protect_iter, protect_many, strip_bytes

from conftest import DICOM_DATA

CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[30:35]
SMALL = DICOM_DATA / "transfer_syntaxes" / "LittleEndianExplicit" / "CT_small.dcm"


@pytest.fixture(scope="module")
def fast():
    return get_engine("fast", "cpu")


def inputs():
    """Five CT slices with a 128 px CT and an image without pixels among them (two sizes, one bad input)."""
    datasets = [read_dicom(p) for p in CT]
    no_pixels = copy.deepcopy(datasets[0])
    del no_pixels.PixelData
    return datasets[:2] + [read_dicom(SMALL), no_pixels] + datasets[2:], CT[:2] + [SMALL, None] + CT[2:]


def test_each_input_gets_its_own_result_whatever_the_batch_size(site_keys, fast):
    datasets, paths = inputs()
    kw = {"recipients": [site_keys["research"].cert], "signer": site_keys["hospital"], "engine": fast}
    small_batches = protect_many(datasets, batch_frames=2, **kw)
    one_batch = protect_many(datasets, batch_frames=64, **kw)
    assert len(small_batches) == len(one_batch) == len(datasets)
    for path, a, b in zip(paths, small_batches, one_batch):
        if path is None:
            assert isinstance(a, MiadmarkError) and isinstance(b, MiadmarkError)
            continue
        assert a.SOPInstanceUID == b.SOPInstanceUID and len(a.PixelData) == len(b.PixelData)
        # the same watermark: batched float kernels may round a value the other way, nothing more
        wa = np.frombuffer(a.PixelData, "<i2").astype(int)
        wb = np.frombuffer(b.PixelData, "<i2").astype(int)
        assert np.abs(wa - wb).max() <= 1 and np.mean(wa != wb) < 1e-3
        assert strip_bytes(a, keyring=[site_keys["research"]], trust=[site_keys["hospital"].cert]) == \
            path.read_bytes()


def test_protect_iter_encodes_and_yields_every_index_once(site_keys, fast):
    datasets, paths = inputs()
    seen = {}
    for i, result in protect_iter(datasets, recipients=[site_keys["research"].cert], signer=site_keys["hospital"],
                                  engine=fast, batch_frames=3, encode=dataset_to_bytes):
        assert i not in seen
        seen[i] = result
    assert sorted(seen) == list(range(len(datasets)))
    for i, path in enumerate(paths):
        if path is None:
            assert isinstance(seen[i], MiadmarkError) and "Pixel Data" in str(seen[i])
        else:
            assert strip_bytes(dataset_from_bytes(seen[i]), keyring=[site_keys["research"]], trust=None) == \
                path.read_bytes()


NATIVE = DICOM_DATA / "transfer_syntaxes" / "LittleEndianExplicit"


@pytest.mark.parametrize("path", [CT[0], SMALL, NATIVE / "SC_rgb.dcm", NATIVE / "SC_rgb_16bit_2frame.dcm"])
def test_stored_values_from_the_model_are_those_of_the_per_pixel_mapping(path):
    """from_model maps every pixel densely and keeps the unchanged ones: the same values as mapping only the
    changed pixels one by one (the reference below), and every unchanged pixel bit for bit."""
    from miadmark.pixels import decode, from_model, to_model

    ds = read_dicom(path)
    px = decode(ds)
    x, mapping = to_model(ds, px)
    rng = np.random.default_rng(0)
    x_new = np.clip(x + rng.normal(0, 0.02, x.shape).astype(np.float32) * (rng.random(x.shape) < 0.6), 0, 1)
    got = from_model(px, mapping, x, x_new, None)
    changed = np.any(x_new != x, axis=1)
    f, h, w = np.nonzero(changed)
    vals = x_new[f, :, h, w].astype(np.float64)
    lo_v, hi_v = px.value_range
    want = px.stored.copy()
    if mapping.kind == "mono":
        v = 1.0 - vals[:, 0] if mapping.invert else vals[:, 0]
        modality = mapping.lo[f] + v * (mapping.hi[f] - mapping.lo[f])
        want[f, h, w, 0] = np.clip(np.rint((modality - mapping.intercept) / mapping.slope), lo_v, hi_v)
    else:
        want[f, h, w, :] = np.clip(np.rint(vals * mapping.scale), lo_v, hi_v)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(got[~changed], px.stored[~changed])
