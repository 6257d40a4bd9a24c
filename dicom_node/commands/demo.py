"""`miadmark demo`: the whole path on loopback, no server to install.

Makes a hospital and a research identity, starts a research receiving node and the protecting
gateway (real DICOM associations on 127.0.0.1), sends slices of the real CT series in
../shared/data through the gateway, and checks that every slice the research node stored is the
original, bit for bit. A protected slice and a before/after picture are left to look at.

Each run starts from a clean output folder (the keys are kept): what an earlier run left in the
spool, the receiving node's store or its quarantine would otherwise be delivered or counted again,
and the demo passes only on what this run sent and delivered. A folder not made by the demo (no
MARKER in it) is never emptied.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from dicomnet.ports import free_port
from miadmark.engine import DEFAULT_PROFILE, PROFILE_HELP, PROFILE_NAMES

MARKER = ".miadmark-demo"  # in a folder the demo made: its run folders may be emptied
RUN_STATE = ("spool", "received", "quarantine", "protected", "miadmark.yaml", "preview.png")
DEFAULT_SERIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"

CONFIG = """\
identity: {{key: keys/hospital.key.pem, cert: keys/hospital.cert.pem}}
gateway:
  ae_title: MIADMARK
  port: {gateway_port}
  spool: spool/
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {receiver_port}}}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research]
    action: protect
    profile: {profile}
    recipients: [keys/research.cert.pem]
  - action: block
receiver:
  ae_title: RESEARCH
  port: {receiver_port}
  store: received/
  quarantine: quarantine/
  keys: [{{key: keys/research.key.pem, cert: keys/research.cert.pem}}]
  trust: [keys/hospital.cert.pem]
"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="protect and strip real CT slices through a gateway and a receiver on loopback")
    p.add_argument("--out", default="demo-out", help="folder for keys, configuration, spool and results")
    p.add_argument("--series", default=str(DEFAULT_SERIES),
                   help="folder of DICOM files to send (any file name; default: the shared CT series)")
    p.add_argument("--slices", type=int, default=8, help="how many files of the series to send")
    p.add_argument("--profile", default=None, choices=PROFILE_NAMES,
                   help=PROFILE_HELP)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for delivery")
    p.set_defaults(func=run)


def series_files(folder: Path, limit: int) -> list[Path]:
    """The first `limit` DICOM files of the folder by name, with or without .dcm (as protect takes them)."""
    from miadmark.commands.files import iter_inputs
    return [item.path for item in iter_inputs([str(folder)], [])][:limit] if folder.is_dir() else []


def clean_output(out: Path) -> None:
    """Empty what an earlier run left in `out` (keys kept); ValueError for a folder the demo did not make."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out}: not empty and not a demo output folder; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    for name in RUN_STATE:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run(args) -> int:
    from dicom_node.gateway import Gateway
    from dicom_node.receiver import Receiver
    from dicom_node.storescu import send_files

    from miadmark.config import load_config
    from miadmark.dicomio import body_bytes, read_dicom
    from miadmark.keys import new_identity

    out = Path(args.out).resolve()
    files = series_files(Path(args.series), args.slices)
    if not files:
        print(f"{args.series}: no DICOM files found (files with the DICM marker, any name)", file=sys.stderr)
        return 2
    try:
        clean_output(out)
    except (ValueError, OSError) as exc:
        print(f"miadmark demo: {exc}", file=sys.stderr)
        return 2
    for name in ("hospital", "research"):
        if not (out / "keys" / f"{name}.key.pem").exists():
            new_identity(name, out / "keys")
    profile = args.profile or DEFAULT_PROFILE
    config_path = out / "miadmark.yaml"
    config_path.write_text(CONFIG.format(gateway_port=free_port(), receiver_port=free_port(), profile=profile))
    config = load_config(config_path)
    print(f"config    {config_path}\nkeys      {out / 'keys'}")

    receiver = Receiver(config).start()
    gateway = Gateway(config).start(watch=False)
    started = time.perf_counter()
    try:
        statuses = send_files("127.0.0.1", gateway.port, files, called_ae="RESEARCH", calling_ae="DEMO")
        accepted = sum(1 for s in statuses if s == 0)
        print(f"sent      {accepted}/{len(files)} slices of {args.series} to the gateway (profile {profile})")
        originals = {str(read_dicom(f).SOPInstanceUID): f for f in files}
        store = Path(config.receiver.store)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and len(list(store.rglob("*.dcm"))) < accepted:
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
    finally:
        gateway.stop()
        receiver.stop()

    stored = sorted(store.rglob("*.dcm"))
    exact, seen = 0, set()
    for path in stored:
        ds = read_dicom(path)
        uid = str(ds.SOPInstanceUID)
        source = originals.get(uid)
        if source is not None and uid not in seen and body_bytes(ds) == body_bytes(read_dicom(source)):
            exact += 1
        seen.add(uid)
    quarantined = sorted(Path(config.receiver.quarantine).rglob("*.dcm"))
    print(f"received  {len(stored)} clean originals in {store} ({elapsed:.1f} s through protect + strip)")
    print(f"exact     {exact}/{len(files)} bit-exact equal to their source (dataset bytes; File Meta is "
          "never sent over DICOM)")
    if quarantined:
        print(f"quarantined {len(quarantined)} in {config.receiver.quarantine}")
    _preview(files[0], out, config, profile)
    # this run's own outcome only: every file accepted, delivered once, exact, nothing quarantined
    ok = accepted == len(files) == exact == len(stored) and not quarantined
    print("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def _preview(source: Path, out: Path, config, profile: str) -> None:
    """Protect one slice to out/protected and draw original | protected | difference to out/preview.png."""
    from PIL import Image

    from miadmark.dicomio import read_dicom, write_dicom_atomic
    from miadmark.keys import load_certificate, load_identity
    from miadmark.pixels import decode, to_model
    from miadmark.protect import protect

    signer = load_identity(config.identity.key, config.identity.cert)
    original = read_dicom(source)
    protected = protect(original, recipients=[load_certificate(out / "keys" / "research.cert.pem")],
                        signer=signer, profile=profile)
    target = write_dicom_atomic(protected, out / "protected" / source.name)
    before = to_model(original, decode(original))[0][0, 0]
    after = to_model(protected, decode(protected))[0][0, 0]
    diff = np.abs(after - before)
    diff = diff / max(float(diff.max()), 1e-6)
    strip_img = np.concatenate([before, after, diff], axis=1)
    Image.fromarray((strip_img * 255).round().astype(np.uint8)).save(out / "preview.png")
    print(f"protected {target} (open it in any viewer)\npreview   {out / 'preview.png'} "
          "(original | protected | difference)")
