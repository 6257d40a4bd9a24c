"""`miadmark verify SENT RECEIVED` over real network hops: dcmtk `storescu` sends real CT slices to dcmtk
`storescp` and to the research receiving node; `cmp` fails on every file (the hop re-encodes), verify says
each is the same object; one element changed, a pixel changed or a file missing is named (tags, never
values)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from waiting import free_port, wait_for

from conftest import DICOM_DATA

CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[:6]
needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None or shutil.which("storescp") is None,
                                 reason="dcmtk not installed (Debian package dcmtk)")


def verify(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "miadmark.cli", "verify", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def storescu(port: int, called: str, files) -> None:
    res = subprocess.run(["storescu", "-aet", "PACS", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture
def sent(tmp_path) -> Path:
    folder = tmp_path / "sent"
    folder.mkdir()
    for f in CT:
        shutil.copy(f, folder)
    return folder


@pytest.fixture
def via_storescp(tmp_path, sent) -> Path:
    """What dcmtk storescp stored of a storescu send of `sent`."""
    out, port = tmp_path / "storescp", free_port()
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-od", str(out), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: listening(port), timeout=30)
        storescu(port, "STORESCP", sorted(sent.iterdir()))
        assert wait_for(lambda: len(list(out.iterdir())) == len(CT), timeout=30)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


@needs_dcmtk
def test_storescu_to_storescp_is_the_same_objects_though_no_file_is_byte_equal(sent, via_storescp):
    received = sorted(via_storescp.iterdir())
    assert not {f.read_bytes() for f in sent.iterdir()} & {f.read_bytes() for f in received}  # cmp fails on all
    res = verify(sent, via_storescp)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == f"{len(CT)} same, 0 differ, 0 missing"
    assert all(line.startswith("same ") and "Pixel Data bytes equal" in line for line in lines[:-1]), res.stdout
    assert "Implicit VR Little Endian -> Explicit VR Little Endian" in lines[0]
    assert "File Meta Information rewritten by the receiver" in lines[0]
    one = received[0]
    assert verify(next(f for f in sent.iterdir() if _uid(f) == _uid(one)), one).returncode == 0  # file mode


@needs_dcmtk
def test_one_element_or_one_pixel_changed_is_named_without_its_value(tmp_path, sent, via_storescp):
    received = sorted(via_storescp.iterdir())
    ds = pydicom.dcmread(received[0])
    ds.PatientID = "SECRETLY CHANGED"
    ds.save_as(received[0])
    ds = pydicom.dcmread(received[1])
    pixels = bytearray(ds.PixelData)
    pixels[1001] ^= 0x01
    ds.PixelData = bytes(pixels)
    ds.save_as(received[1])
    gone = _uid(received[2])
    received[2].unlink()
    res = verify(sent, via_storescp)
    assert res.returncode == 1
    out = res.stdout
    assert "SECRETLY" not in out and f"{len(CT) - 3} same, 2 differ, 1 missing" in out.splitlines()[-1], out
    differs = {line.split(" != ")[1].split(":")[0]: line for line in out.splitlines() if line.startswith("DIFFERS")}
    assert "(0010,0020) PatientID: value differs" in differs[str(received[0])]
    assert differs[str(received[1])].endswith(": (7FE0,0010) PixelData: bytes differ"), differs
    assert any(line.startswith("MISSING ") and gone in line for line in out.splitlines())


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@needs_dcmtk
def test_storescu_to_the_research_receiving_node(tmp_path, sent, site_keys):
    keys = site_keys["hospital_paths"][0].parent
    port = free_port()
    cfg = tmp_path / "research.yaml"
    cfg.write_text(f"""\
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {port}
  store: received/
  quarantine: quarantine/
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
  trust: [{keys}/hospital.cert.pem]
  allow_calling: [PACS]
  plain: store
""")
    proc = subprocess.Popen([sys.executable, "-m", "miadmark.cli", "receive", "--config", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: listening(port), timeout=60)
        storescu(port, "RESEARCH", sorted(sent.iterdir()))
        store = tmp_path / "received"
        assert wait_for(lambda: len(list(store.rglob("*.dcm"))) == len(CT), timeout=30)
    finally:
        proc.terminate()
        proc.wait(30)
    res = verify(sent, store)
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == f"{len(CT)} same, 0 differ, 0 missing", res.stdout


def _encoded(ds, implicit: bool) -> bytes:
    import io

    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = ds.copy()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buf.getvalue()


def test_nested_sequences_compare_across_vr_encodings_and_name_the_path():
    from pydicom.data import get_testdata_file

    from miadmark.verify import compare_bytes

    def load():
        from pydicom.dataset import FileMetaDataset

        ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.file_meta = meta
        return ds
    ds = load()
    same = compare_bytes(_encoded(ds, implicit=True), _encoded(ds, implicit=False))
    assert same.same and any("Implicit VR Little Endian -> Explicit VR Little Endian" in a for a in same.allowed)
    ds.StructureSetROISequence[0].ROIName = "CHANGED"
    differ = compare_bytes(_encoded(load(), implicit=True),
                           _encoded(ds, implicit=False))
    assert differ.differences == ["(3006,0020) StructureSetROISequence[0] (3006,0026) ROIName: value differs"]


@needs_dcmtk
@pytest.mark.slow
def test_storescu_through_the_gateway_to_the_research_node_is_the_same(tmp_path, sent, site_keys):
    """The issue's path: modality (storescu) -> protecting gateway -> research node (strips): verify says same."""
    keys = site_keys["hospital_paths"][0].parent
    gw_port, rx_port = free_port(), free_port()
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"""\
identity: {{key: {keys}/hospital.key.pem, cert: {keys}/hospital.cert.pem}}
gateway: {{ae_title: MIADMARK, bind: 127.0.0.1, port: {gw_port}, spool: spool/, device: cpu}}
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research]
    action: protect
    recipients: [{keys}/research.cert.pem]
    profile: plain
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {rx_port}
  store: received/
  quarantine: quarantine/
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
  trust: [{keys}/hospital.cert.pem]
  allow_calling: [MIADMARK]
""")
    procs = [subprocess.Popen([sys.executable, "-m", "miadmark.cli", "--log-file", str(tmp_path / f"{cmd}.log"), cmd,
                               "--config", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for cmd in ("receive", "gateway")]
    store = tmp_path / "received"
    try:
        assert wait_for(lambda: listening(rx_port) and listening(gw_port), timeout=90)
        files = sorted(sent.iterdir())[:3]
        storescu(gw_port, "RESEARCH", files)
        assert wait_for(lambda: len(list(store.rglob("*.dcm"))) == len(files), timeout=180), \
            (tmp_path / "gateway.log").read_text()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    only = tmp_path / "three"
    only.mkdir()
    for f in files:
        shutil.copy(f, only)
    res = verify(only, store)
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "3 same, 0 differ, 0 missing", res.stdout
