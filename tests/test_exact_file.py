"""Byte-exact originals: what pydicom would not write back the same (group lengths, implicit private
elements, padding), network-style bytes, a dataset changed in memory, the CLI's output file,
and pixel value range elements of the protected object."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataelem import DataElement
from pydicom.uid import ImplicitVRLittleEndian

from miadmark.cli import main
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, read_dicom, source_bytes
from miadmark.protect import open_record, protect, strip, strip_bytes

from conftest import DICOM_DATA

CT = DICOM_DATA / "transfer_syntaxes" / "LittleEndianExplicit" / "CT_small.dcm"
J2K = DICOM_DATA / "transfer_syntaxes" / "JPEG2000Lossless" / "US1_J2KR.dcm"


def _round_trip(ds, keys):
    protected = protect(ds, recipients=[keys["research"].cert], signer=keys["hospital"], profile="plain")
    protected = dataset_from_bytes(dataset_to_bytes(protected))  # as it travels
    return protected, strip_bytes(protected, keyring=[keys["research"]], trust=[keys["hospital"].cert])


def _odd_file() -> bytes:
    """Implicit VR LE with a wrong group length, a private element, an odd-length value (pydicom pads it
    when it writes) and trailing padding after Pixel Data."""
    ds = pydicom.dcmread(CT)
    ds.add(DataElement(0x00080000, "UL", 1234))  # a retired group length with a wrong value
    block = ds.private_block(0x0009, "ODD VENDOR", create=True)
    block.add_new(0x01, "LO", "vendor text")
    ds.StudyDescription = "odd padding value"  # written with an odd length below: pydicom pads it
    ds.add(DataElement(0xFFFCFFFC, "OB", b"\0" * 6))  # Data Set Trailing Padding
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    value = (18).to_bytes(4, "little") + b"odd padding value "  # implicit VR: 4-byte length, then the value
    assert buf.getvalue().count(value) == 1
    return buf.getvalue().replace(value, (17).to_bytes(4, "little") + b"odd padding value")


def test_odd_encodings_come_back_byte_for_byte(site_keys):
    data = _odd_file()
    ds = dataset_from_bytes(data)
    assert dataset_to_bytes(ds) != data  # pydicom alone would not give the file back
    protected, original = _round_trip(ds, site_keys)
    assert original == data
    stripped = strip(protected, keyring=[site_keys["research"]], trust=[site_keys["hospital"].cert])
    assert source_bytes(stripped) == data  # the stripped dataset keeps its exact bytes for writers


def test_a_dataset_changed_after_reading_is_recorded_as_pydicom_writes_it(site_keys):
    ds = read_dicom(CT)
    assert source_bytes(ds) == CT.read_bytes()
    ds.StudyDescription = "changed in memory"
    assert source_bytes(ds) is None  # its file no longer describes it
    _, original = _round_trip(ds, site_keys)
    assert original == dataset_to_bytes(ds)


def test_record_keeps_the_file_without_its_pixel_data(site_keys):
    protected, original = _round_trip(read_dicom(CT), site_keys)
    record = open_record(protected, [site_keys["research"]])
    assert record.original_file is not None and record.pixel_offset is not None
    assert len(record.original_file) < len(original) // 10  # header only, compressed


def test_strip_command_writes_the_original_file(tmp_path, site_keys):
    (h_key, h_cert), (r_key, r_cert) = site_keys["hospital_paths"], site_keys["research_paths"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for src in (CT, J2K):
        (inputs / src.name).write_bytes(src.read_bytes())
    assert main(["protect", str(inputs), "--out", str(tmp_path / "p"), "--recipient", str(r_cert),
                 "--sign-key", str(h_key), "--sign-cert", str(h_cert), "--profile", "plain"]) == 0
    assert main(["strip", str(tmp_path / "p"), "--out", str(tmp_path / "s"), "--key", str(r_key),
                 "--cert", str(r_cert), "--trust", str(h_cert)]) == 0
    for src in (CT, J2K):
        assert (tmp_path / "s" / src.name).read_bytes() == src.read_bytes(), src.name


def test_pixel_value_range_describes_the_protected_pixels(site_keys):
    ds = read_dicom(CT)
    ds.add_new(0x00280106, "US", 0)  # Smallest / Largest Image Pixel Value, wrong on purpose: recomputed
    ds.add_new(0x00280107, "US", 1)
    protected = protect(ds, recipients=[site_keys["research"].cert], signer=site_keys["hospital"], profile="plain")
    pixels = protected.pixel_array
    assert (protected.SmallestImagePixelValue, protected.LargestImagePixelValue) == (pixels.min(), pixels.max())
    stripped = strip(protected, keyring=[site_keys["research"]], trust=[site_keys["hospital"].cert])
    assert (stripped.SmallestImagePixelValue, stripped.LargestImagePixelValue) == (0, 1)
