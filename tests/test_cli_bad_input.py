"""Bad input through the command line: one clear stderr line naming the file and the reason,
a non-zero exit, no output file for it, and the other files of the run still processed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from miadmark.cli import main
from miadmark.dicomio import read_dicom, write_dicom_atomic
from miadmark.keys import new_identity

from conftest import DICOM_DATA

GOOD = DICOM_DATA / "transfer_syntaxes" / "LittleEndianExplicit" / "MR_small.dcm"
UNDECODABLE = [DICOM_DATA / "transfer_syntaxes" / "JPEGExtended" / "JPEG-lossy.dcm",
               DICOM_DATA / "transfer_syntaxes" / "JPEGExtended" / "RG2_JPLY.dcm",
               DICOM_DATA / "transfer_syntaxes" / "JPEG2000Lossless" / "966.dcm"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-keys")
    pw = folder / "pw.txt"
    pw.write_text("correct horse\n")
    paths = {name: new_identity(name, folder) for name in ("hospital", "research", "other")}
    paths["locked"] = new_identity("locked", folder, passphrase=b"correct horse")
    paths["pw"] = pw
    return paths


def _protect(keys, inputs, out, *extra):
    h_key, h_cert = keys["hospital"]
    return main(["protect", *map(str, inputs), "--out", str(out), "--recipient", str(keys["research"][1]),
                 "--sign-key", str(h_key), "--sign-cert", str(h_cert), "--profile", "plain", *extra])


def _strip(keys, inputs, out, who="research", trust="hospital"):
    key, cert = keys[who]
    return main(["strip", *map(str, inputs), "--out", str(out), "--key", str(key), "--cert", str(cert),
                 "--trust", str(keys[trust][1])])


def _errors(capsys) -> tuple[list[str], str]:
    captured = capsys.readouterr()
    return [line for line in captured.err.splitlines() if line.strip()], captured.out


def test_undecodable_non_dicom_and_truncated_files_are_refused(tmp_path, keys, capsys):
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("this is not DICOM")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(GOOD.read_bytes()[:4000])
    inputs = [GOOD, *UNDECODABLE, not_dicom, truncated]
    rc = _protect(keys, inputs, tmp_path / "out")
    errors, out = _errors(capsys)
    assert rc != 0
    assert out.strip().splitlines()[-1] == "1 protected, 5 failed"
    assert len(errors) == 5
    for path, reason in [(UNDECODABLE[0], "does not decode"), (UNDECODABLE[1], "does not decode"),
                         (UNDECODABLE[2], "does not decode"), (not_dicom, "not a DICOM file"),
                         (truncated, "truncated")]:
        line = next(e for e in errors if e.startswith(f"{path}:"))
        assert reason in line, line
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["MR_small.dcm"]  # nothing for the failures, no temporary leftovers


def test_untrusted_signer_is_told_apart_from_a_namesake_by_its_fingerprint(tmp_path, keys, protected_file, capsys):
    """Two certificates named `hospital`: the refusal's fingerprint is the signer's, as openssl prints it."""
    namesake = new_identity("hospital", tmp_path / "namesake")[1]  # same CN, another key
    rc = main(["strip", str(protected_file), "--out", str(tmp_path / "out"), "--key", str(keys["research"][0]),
               "--cert", str(keys["research"][1]), "--trust", str(namesake)])
    errors, _ = _errors(capsys)

    def openssl_fingerprint(cert: Path) -> str:
        res = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                             capture_output=True, text=True, check=True)
        return res.stdout.strip().split("=", 1)[1]
    assert rc != 0 and len(errors) == 1 and "signer 'hospital'" in errors[0]
    assert openssl_fingerprint(keys["hospital"][1]) in errors[0], errors[0]
    assert openssl_fingerprint(namesake) not in errors[0]


def test_a_folder_names_every_file_it_skips(tmp_path, keys, capsys):
    folder = tmp_path / "in"
    (folder / "docs").mkdir(parents=True)
    shutil.copy(GOOD, folder)
    (folder / "docs" / "notes.txt").write_text("not an image")
    (folder / "README").write_text("neither")
    rc = _protect(keys, [folder], tmp_path / "out")
    errors, out = _errors(capsys)
    assert rc == 0 and errors == []
    lines = out.strip().splitlines()
    assert f"skipped {folder / 'README'}: not DICOM (no DICM marker)" in lines
    assert f"skipped {folder / 'docs' / 'notes.txt'}: not DICOM (no DICM marker)" in lines
    assert lines[-1] == "1 protected, 0 failed, 2 skipped (not DICOM)"


def test_a_file_cut_at_1000_bytes_says_truncated(tmp_path, keys, capsys):
    ct = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[0]
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ct.read_bytes()[:1000])
    rc = _protect(keys, [cut], tmp_path / "out")
    errors, _ = _errors(capsys)
    assert rc != 0 and len(errors) == 1
    assert errors[0].startswith(f"{cut}: truncated file") and "Pixel Data to watermark" not in errors[0], errors


def test_already_protected_is_refused(tmp_path, keys, capsys):
    assert _protect(keys, [GOOD], tmp_path / "p1") == 0
    capsys.readouterr()
    rc = _protect(keys, [tmp_path / "p1" / "MR_small.dcm"], tmp_path / "p2")
    errors, out = _errors(capsys)
    assert rc != 0 and "already protected" in errors[0]
    assert not (tmp_path / "p2" / "MR_small.dcm").exists()


@pytest.fixture(scope="module")
def protected_file(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("protected")
    assert _protect(keys, [GOOD], out) == 0
    return out / "MR_small.dcm"


@pytest.mark.parametrize("case,expected", [
    ("key_of_no_recipient", r"none of the 1 key\(s\) held is a recipient"),
    ("untrusted_signer", r"signer 'hospital' \(SHA-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}\) is not in the trust list"),
    ("flipped_record_byte", "record (does not decrypt|signature does not verify|does not parse)|not a CMS"),
    ("changed_pixel", "does not match the record's hash"),
    ("not_protected", "not protected"),
])
def test_strip_failures(case, expected, tmp_path, keys, protected_file, capsys):
    src = tmp_path / "in" / "MR_small.dcm"
    src.parent.mkdir()
    shutil.copy(protected_file, src)
    who, trust = "research", "hospital"
    if case == "key_of_no_recipient":
        who = "other"
    elif case == "untrusted_signer":
        trust = "other"
    elif case == "flipped_record_byte":
        ds = read_dicom(src)
        content = bytearray(ds.EncryptedAttributesSequence[0].EncryptedContent)
        content[len(content) // 2] ^= 0x01
        ds.EncryptedAttributesSequence[0].EncryptedContent = bytes(content)
        write_dicom_atomic(ds, src)
    elif case == "changed_pixel":
        ds = read_dicom(src)
        pixels = bytearray(ds.PixelData)
        pixels[10] ^= 0x01  # far from the logo or not: any pixel change breaks the original hash
        ds.PixelData = bytes(pixels)
        write_dicom_atomic(ds, src)
    elif case == "not_protected":
        shutil.copy(GOOD, src)
    before = src.read_bytes()
    rc = _strip(keys, [src], tmp_path / "out", who=who, trust=trust)
    errors, out = _errors(capsys)
    assert rc != 0
    assert len(errors) == 1 and errors[0].startswith(f"{src}:"), errors
    assert re.search(expected, errors[0]), errors[0]
    assert out.strip().splitlines()[-1] == "0 stripped, 1 failed"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    assert src.read_bytes() == before  # input left as it was


def test_wrong_passphrase_and_encrypted_key(tmp_path, keys, protected_file, capsys):
    locked_key, locked_cert = keys["locked"]
    bad_pw = tmp_path / "bad.txt"
    bad_pw.write_text("wrong")
    rc = main(["protect", str(GOOD), "--out", str(tmp_path / "o"), "--recipient", str(keys["research"][1]),
               "--sign-key", str(locked_key), "--sign-cert", str(locked_cert), "--passphrase-file", str(bad_pw),
               "--profile", "plain"])
    errors, _ = _errors(capsys)
    assert rc != 0 and "wrong passphrase" in errors[0] and str(locked_key) in errors[0]
    assert not (tmp_path / "o").exists()
    rc = main(["protect", str(GOOD), "--out", str(tmp_path / "o"), "--recipient", str(keys["research"][1]),
               "--sign-key", str(locked_key), "--sign-cert", str(locked_cert), "--passphrase-file",
               str(keys["pw"]), "--profile", "plain"])
    assert rc == 0 and (tmp_path / "o" / "MR_small.dcm").exists()


def test_key_file_modes(keys):
    key_path, cert_path = keys["hospital"]
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in Path(keys["locked"][0]).read_bytes()


def test_folder_inputs_keep_relative_paths_and_round_trip(tmp_path, keys, capsys):
    src = DICOM_DATA / "transfer_syntaxes" / "RLELossless"
    assert _protect(keys, [src], tmp_path / "p") == 0
    assert _strip(keys, [tmp_path / "p"], tmp_path / "s") == 0
    _, out = _errors(capsys)
    names = sorted(p.name for p in src.glob("*.dcm"))
    assert sorted(p.name for p in (tmp_path / "s").glob("*.dcm")) == names
    for name in names:
        assert read_dicom(tmp_path / "s" / name).PixelData == read_dicom(src / name).PixelData
    assert f"{len(names)} stripped, 0 failed" in out


def test_folder_with_hostile_files_fails_only_those(tmp_path, keys):
    """Issue 14, finding 5: one bad file fails alone (one stderr line, no value echoed), the others are
    written, the summary comes, exit 1. Run as a separate process under a 3 GiB address-space limit:
    the old code aborted in gdcm (JPEG with BitsAllocated 32) and lost the whole run."""
    import resource
    import subprocess
    import sys

    import bad_inputs

    src = tmp_path / "in"
    src.mkdir()
    good = [GOOD, DICOM_DATA / "transfer_syntaxes" / "RLELossless" / "MR_small_RLE.dcm"]
    for path in good:
        shutil.copy(path, src / path.name)
    bad = [bad_inputs.jpeg_bits_32(src / "b1_jpeg32.dcm"), bad_inputs.huge_rle(src / "b2_huge_rle.dcm"),
           bad_inputs.malformed_ds(src / "b3_ds.dcm"), bad_inputs.nested_sequences(src / "b4_deep.dcm")]

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    h_key, h_cert = keys["hospital"]
    proc = subprocess.run(
        [sys.executable, "-m", "miadmark.cli", "protect", str(src), "--out", str(tmp_path / "out"),
         "--recipient", str(keys["research"][1]), "--sign-key", str(h_key), "--sign-cert", str(h_cert),
         "--profile", "plain", "--device", "cpu", "--progress"],
        capture_output=True, text=True, timeout=300, preexec_fn=limit_memory)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "2 protected, 4 failed"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in good)
    errors = [line for line in proc.stderr.splitlines() if line.startswith(str(src))]
    assert len(errors) == 4, proc.stderr
    for path, reason in [(bad[0], "BitsAllocated 32 is not valid for a JPEG"), (bad[1], "exceeds the limit"),
                         (bad[2], "RescaleSlope is not a number"), (bad[3], "nested too deeply")]:
        assert sum(line.startswith(f"{path}:") for line in errors) == 1
        assert reason in next(line for line in errors if line.startswith(f"{path}:"))
    assert bad_inputs.SECRET.decode() not in proc.stderr + proc.stdout
    assert "100%" in proc.stderr  # --progress: the bar, on stderr, even though stderr is not a terminal


def test_corrupted_sop_class_vr_fails_alone_beside_good_slices(tmp_path, keys, capsys):
    """Issue 22 item 5: the header read that decides SEG / RTSTRUCT is guarded like the pixel path."""
    from bad_inputs import CT, bad_vr_sop_class

    folder = tmp_path / "in"
    folder.mkdir()
    for slice_ in CT[1:3]:
        shutil.copy(slice_, folder / slice_.name)
    bad_vr_sop_class(folder / "bad-vr.dcm")
    rc = _protect(keys, [folder], tmp_path / "out")
    errors, _ = _errors(capsys)
    assert rc != 0
    failed = [line for line in errors if "bad-vr.dcm" in line]
    assert len(failed) == 1 and "SOPClassUID (0008,0016)" in failed[0], errors
    written = sorted(p.name for p in (tmp_path / "out").rglob("*.dcm"))
    assert written == sorted(s.name for s in CT[1:3])
