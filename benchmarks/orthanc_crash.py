"""kill -9 the hospital Orthanc at random points of a protect export and of an auto-export, restart it
each time, and count what the keyless receivers hold: per original, how many protected copies.

    .venv/bin/python benchmarks/orthanc_crash.py [--slices 96] [--kills 3] [--seed 1]

Expected: every original exactly once, none unprotected, both jobs Success. Numbers, not pass/fail
(tests/test_orthanc_durable.py is the test; this is the issue's full-size run).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miadmark.keys import load_identity, new_identity  # noqa: E402
from miadmark.protect import strip  # noqa: E402
from orthanc_plugin.testing import OrthancProcess, missing  # noqa: E402

CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def copies(site: OrthancProcess, research) -> tuple[collections.Counter, int]:
    per_original, unprotected = collections.Counter(), 0
    for iid in site.instances():
        ds = pydicom.dcmread(io.BytesIO(site.get(f"/instances/{iid}/file").content))
        if "EncryptedAttributesSequence" not in ds:
            unprotected += 1
            continue
        per_original[str(strip(ds, keyring=[research], trust=None).SOPInstanceUID)] += 1
    return per_original, unprotected


def crash(hospital: OrthancProcess, receiver: OrthancProcess, points: list[int]) -> None:
    for at in points:
        receiver.wait_for(lambda: len(receiver.instances()) >= at, timeout=600, interval=0.05)
        time.sleep(random.random() * 0.3)
        hospital.kill()
        hospital.start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if missing():
        print(missing())
        return 1
    random.seed(args.seed)
    files = sorted(CT.glob("*.dcm"))[:args.slices]
    originals = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        new_identity("hospital", tmp)
        research = load_identity(*new_identity("research", tmp))
        (tmp / "hospital.yaml").write_text(
            "identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
            "destinations: {plain: {orthanc_modality: plain}, partner: {orthanc_modality: partner}}\n"
            "rules:\n"
            "  - {send_to: [partner], action: protect, recipients: [research.cert.pem], profile: plain, auto: true}\n"
            "  - {send_to: [plain], action: protect, recipients: [research.cert.pem], profile: plain}\n")
        plain = OrthancProcess(tmp / "plain", aet="PLAIN", plugin=False).start()
        partner = OrthancProcess(tmp / "partner", aet="PARTNER", plugin=False).start()
        hospital = OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=tmp / "hospital.yaml",
                                  modalities={"plain": plain, "partner": partner}, stable_age=2).start()
        try:
            t0 = time.monotonic()
            study = None
            for f in files:
                study = hospital.upload(f)["ParentStudy"]
            points = sorted(random.sample(range(2, args.slices - 2), args.kills))
            crash(hospital, partner, points)  # the auto-export
            partner.wait_for(lambda: len(partner.instances()) >= args.slices, timeout=600)
            job = hospital.post("/modalities/plain/store", {"Resources": [study], "Asynchronous": True}).json()["ID"]
            crash(hospital, plain, sorted(random.sample(range(2, args.slices - 2), args.kills)))
            hospital.wait_for(lambda: hospital.get_json(f"/jobs/{job}")["State"] in ("Success", "Failure"),
                              timeout=600)
            wall = time.monotonic() - t0
            report = {"slices": args.slices, "kills_per_export": args.kills, "seed": args.seed,
                      "auto_kill_points": points, "wall_s": round(wall, 1)}
            for name, site in (("auto_export", partner), ("export", plain)):
                per, unprotected = copies(site, research)
                report[name] = {"originals_delivered": len(set(per) & originals),
                                "missing": len(originals - set(per)),
                                "more_than_once": sum(1 for n in per.values() if n > 1),
                                "unprotected": unprotected}
            report["export_job"] = hospital.get_json(f"/jobs/{job}")["State"]
            report["auto_jobs"] = [j["State"] for j in hospital.get_json("/miadmark/status")["Recent"]
                                   if "auto-export" in j["Description"]]
            print(json.dumps(report, indent=2))
        finally:
            for site in (hospital, plain, partner):
                site.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
