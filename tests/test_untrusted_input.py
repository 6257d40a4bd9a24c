"""Issue 14, findings 6 and 10 (core): hostile input is a named refusal that names the element, never its
value; declared sizes are checked before decoding; strip refuses malformed records cleanly."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import RLELossless

from miadmark.dicomio import dataset_to_bytes, read_dicom
from miadmark.errors import (InvalidInputError, RecordCorruptError, UnsupportedImageError, safe_reason)
from miadmark.limits import MAX_PIXEL_VALUES, MAX_SEQUENCE_DEPTH, check_pixel_header
from miadmark.pixels import decode
from miadmark.protect import protect, strip

import bad_inputs
from bad_inputs import SECRET, TS


def test_declared_size_is_refused_before_decoding(tmp_path):
    ds = read_dicom(bad_inputs.huge_rle(tmp_path / "huge.dcm"))
    with pytest.raises(UnsupportedImageError, match=f"exceeds the limit of {MAX_PIXEL_VALUES}"):
        decode(ds)


def test_jpeg_with_32_bits_allocated_is_refused_not_aborted(tmp_path):
    # gdcm aborts the process on this header; it must be refused before any decoder sees it
    ds = read_dicom(bad_inputs.jpeg_bits_32(tmp_path / "j32.dcm"))
    with pytest.raises(UnsupportedImageError, match="BitsAllocated 32 is not valid for a JPEG"):
        decode(ds)


def test_short_native_pixel_data_names_both_lengths(tmp_path):
    ds = read_dicom(bad_inputs.short_pixel_data(tmp_path / "short.dcm"))
    with pytest.raises(InvalidInputError, match="truncated Pixel Data: 349524 bytes, the header declares 524288"):
        check_pixel_header(ds)


def test_rle_header_must_declare_the_segments_the_image_needs(tmp_path):
    ds = pydicom.dcmread(TS / "RLELossless" / "MR_small_RLE.dcm")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0  # 6 segments needed
    ds.save_as(tmp_path / "rle.dcm")
    with pytest.raises(InvalidInputError, match="RLE header declares 2 segment"):
        decode(read_dicom(tmp_path / "rle.dcm"))
    assert read_dicom(TS / "RLELossless" / "MR_small_RLE.dcm").file_meta.TransferSyntaxUID == RLELossless


def test_deep_nesting_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="nested too deeply"):
        read_dicom(bad_inputs.nested_sequences(tmp_path / "deep.dcm"))
    # just over the bound: read by pydicom, refused by the bounded walk
    with pytest.raises(InvalidInputError, match=f"nested deeper than {MAX_SEQUENCE_DEPTH}"):
        read_dicom(bad_inputs.nested_sequences(tmp_path / "deep40.dcm", depth=MAX_SEQUENCE_DEPTH + 8))
    assert read_dicom(bad_inputs.nested_sequences(tmp_path / "deep8.dcm", depth=8))


def test_malformed_value_is_named_never_echoed(tmp_path, site_keys):
    ds = read_dicom(bad_inputs.malformed_ds(tmp_path / "ds.dcm"))
    with pytest.raises(InvalidInputError) as info:
        protect(ds, recipients=[site_keys["research"].cert], signer=site_keys["hospital"], profile="plain",
                device="cpu")
    assert "RescaleSlope" in str(info.value) and SECRET.decode() not in str(info.value)


def test_element_that_does_not_parse_is_named(tmp_path):
    data = bytearray((TS / "LittleEndianExplicit" / "MR_small.dcm").read_bytes())
    at = data.index(b"\x28\x00\x30\x00DS")  # PixelSpacing: say it is UL, so its 2 x 4-ish bytes do not fit
    data[at + 4:at + 6] = b"UL"
    with pytest.raises(InvalidInputError, match=r"element PixelSpacing \(0028,0030\) cannot be read"):
        read_dicom(io.BytesIO(bytes(data)))


def test_safe_reason_drops_quoted_values():
    exc = ValueError("Invalid value for VR DS: 'DOE^JOHN' and b'\\x00SECRET'")
    reason = safe_reason(exc)
    assert reason.startswith("ValueError: Invalid value for VR DS") and "DOE" not in reason and "SECRET" not in reason


@pytest.fixture(scope="module")
def protected_mr(site_keys):
    ds = read_dicom(TS / "LittleEndianExplicit" / "MR_small.dcm")
    return dataset_to_bytes(protect(ds, recipients=[site_keys["research"].cert], signer=site_keys["hospital"],
                                    profile="plain", device="cpu"))


def _strip(data: bytes, site_keys):
    return strip(read_dicom(io.BytesIO(data)), keyring=[site_keys["research"]], trust=[site_keys["hospital"].cert])


@pytest.mark.parametrize("content", [b"", None])
def test_strip_refuses_empty_record_content(content, protected_mr, site_keys):
    ds = read_dicom(io.BytesIO(protected_mr))
    ds.EncryptedAttributesSequence[0].EncryptedContent = content
    with pytest.raises(RecordCorruptError):
        _strip(dataset_to_bytes(ds), site_keys)


@pytest.mark.parametrize("oid", ["060960864801650304012a", "06092a864886f70d010101"])  # AES-256-CBC, RSA
def test_strip_refuses_altered_algorithm_identifier(oid, protected_mr, site_keys):
    ds = read_dicom(io.BytesIO(protected_mr))
    cms = bytearray(ds.EncryptedAttributesSequence[0].EncryptedContent)
    at = bytes(cms).index(bytes.fromhex(oid))
    cms[at + len(oid) // 2 - 1] ^= 0x04
    ds.EncryptedAttributesSequence[0].EncryptedContent = bytes(cms)
    with pytest.raises(RecordCorruptError, match="unsupported algorithm|does not decrypt"):
        _strip(dataset_to_bytes(ds), site_keys)


def test_strip_refuses_a_signed_record_that_does_not_apply(protected_mr, site_keys):
    """A trusted signer's record with a malformed field (e.g. an unknown word type) is refused, not a crash."""
    from miadmark import record as rec_mod

    ds = read_dicom(io.BytesIO(protected_mr))
    item = ds.EncryptedAttributesSequence[0]
    rec = rec_mod.verify_record(rec_mod.decrypt(bytes(item.EncryptedContent), [site_keys["research"]]))
    rec.word_type = "<u9"
    item.EncryptedContent = rec_mod.encrypt(rec_mod.sign_record(rec, site_keys["hospital"]),
                                            [site_keys["research"].cert])
    with pytest.raises(RecordCorruptError, match="does not apply"):
        _strip(dataset_to_bytes(ds), site_keys)
    assert _strip(protected_mr, site_keys)  # the unaltered object still strips


def test_an_engine_failure_on_one_image_fails_that_image_only(site_keys):
    """protect_many batches equal geometries; when the engine fails on a batch, each image is retried
    alone, so one poison image does not fail its whole series (issue 14, finding 5)."""
    from miadmark.engine import get_engine
    from miadmark.protect import protect_many
    from bad_inputs import CT

    real = get_engine("plain", "cpu")
    datasets = [read_dicom(path) for path in CT[:3]]
    poison = str(datasets[1].SOPInstanceUID)

    class FailsOnOne:  # the real engine, except that it raises when the poison image is in the batch
        profile, device = real.profile, real.device

        def watermark(self, images, lesion, contexts):
            if any(ctx.sop_instance_uid == poison for ctx in contexts):
                raise RuntimeError("engine failure on one image")
            return real.watermark(images, lesion, contexts)

    results = protect_many(datasets, recipients=[site_keys["research"].cert], signer=site_keys["hospital"],
                           engine=FailsOnOne())
    assert [type(r).__name__ for r in results] == ["FileDataset", "MiadmarkError", "FileDataset"]
    assert "watermark engine failed" in str(results[1])


@pytest.mark.parametrize("name", ["JPEG2000Lossless/emri_small_jpeg_2k_lossless.dcm",
                                  "JPEGBaseline/SC_rgb_dcmtk_+eb+cy+np.dcm",
                                  "JPEGLSLossless/MR_small_jpeg_ls_lossless.dcm"])
def test_codestream_that_declares_more_than_the_header_is_refused(name, tmp_path):
    """Decoders allocate what the stream says: a 60000 x 60000 stream under a small header never reaches one."""
    from pydicom.encaps import encapsulate, generate_frames

    from miadmark.limits import codestream_size

    ds = pydicom.dcmread(TS / name)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert codestream_size(bytes(frame)) == (ds.Rows, ds.Columns)
    if frame[:2] == b"\xff\x4f":  # J2K SIZ: Xsiz, Ysiz
        frame[8:16] = (60000).to_bytes(4, "big") * 2
    else:  # JPEG / JPEG-LS frame header: lines, samples per line
        at = next(i for i in range(2, len(frame) - 1) if frame[i] == 0xFF and frame[i + 1] in (0xC0, 0xC1, 0xF7))
        frame[at + 5:at + 9] = (60000).to_bytes(2, "big") * 2
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(tmp_path / "big.dcm")
    with pytest.raises(InvalidInputError, match="the compressed frame declares 60000 x 60000 pixels"):
        decode(read_dicom(tmp_path / "big.dcm"))


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "MediaStorageSOPClassUID"])
def test_forged_vr_on_an_element_protect_writes_is_refused(keyword, site_keys):
    """Found by tools/fuzz.py (seed 1, mutants 4406, 4447, 5064, 5240): the output did not encode."""
    ds = read_dicom(TS / "LittleEndianExplicit" / "MR_small.dcm")
    (ds.file_meta if keyword.startswith("MediaStorage") else ds)[keyword].VR = "UL"
    with pytest.raises(InvalidInputError, match=f"element {keyword} .* has VR UL, not UI"):
        protect(ds, recipients=[site_keys["research"].cert], signer=site_keys["hospital"], profile="plain",
                device="cpu")


def test_record_sequence_with_a_forged_vr_is_not_a_record(protected_mr, site_keys):
    """Found by tools/fuzz.py (seed 1, mutant 4008): strip raised TypeError."""
    from miadmark.errors import NotProtectedError

    ds = read_dicom(io.BytesIO(protected_mr))
    ds[0x04000500].VR, ds[0x04000500].value = "OB", None
    with pytest.raises(NotProtectedError):
        strip(ds, keyring=[site_keys["research"]], trust=[site_keys["hospital"].cert])


def test_command_group_element_in_the_body_is_refused(site_keys):
    """Found by tools/fuzz.py (seed 1, mutants 4757, 11107): the original could not be re-encoded."""
    ds = read_dicom(TS / "LittleEndianExplicit" / "MR_small.dcm")
    ds.add_new(0x0000DA04, "UL", 1)
    with pytest.raises(InvalidInputError, match=r"element \(0000,DA04\) of group 0000 does not belong"):
        protect(ds, recipients=[site_keys["research"].cert], signer=site_keys["hospital"], profile="plain",
                device="cpu")


def test_recipient_info_that_does_not_parse_is_a_corrupt_record(protected_mr, site_keys):
    """Found by tools/fuzz.py (seed 1, mutant 2717): asn1crypto parses lazily, its ValueError escaped."""
    ds = read_dicom(io.BytesIO(protected_mr))
    cms = bytearray(ds.EncryptedAttributesSequence[0].EncryptedContent)
    issuer = site_keys["research"].cert.issuer.public_bytes()
    at = bytes(cms).index(issuer)
    cms[at + issuer.index(b"\x31", 1)] = 0x04  # the first RDN's SET becomes an OCTET STRING
    ds.EncryptedAttributesSequence[0].EncryptedContent = bytes(cms)
    with pytest.raises(RecordCorruptError, match="not a CMS EnvelopedData"):
        _strip(dataset_to_bytes(ds), site_keys)
