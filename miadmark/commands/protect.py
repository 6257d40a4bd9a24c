"""`miadmark protect INPUT... --out DIR --recipient CERT ... --sign-key KEY --sign-cert CERT`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..dicomio import read_dicom, write_dicom_atomic
from ..engine import DEFAULT_PROFILE, PROFILE_HELP, PROFILE_NAMES, STRENGTH_HELP, STRENGTHS, Profile, get_engine
from ..errors import MiadmarkError, safe_reason, unexpected_input
from ..keys import load_certificates, load_identity, read_passphrase
from ..protect import protect_many
from ..lesion import HEADER_TAGS, lesion_kind, mask_for, masks_of_sources
from .files import Tally, add_progress_option, iter_inputs, output_path

BATCH = 16  # files read and watermarked together (one engine batch per frame geometry)


def register(sub) -> None:
    p = sub.add_parser("protect", help="watermark DICOM files and attach an encrypted restoration record")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (walked recursively)")
    p.add_argument("--out", required=True, help="output folder; each output keeps its path relative to its INPUT")
    p.add_argument("--recipient", action="append", required=True, metavar="CERT",
                   help="certificate of a site allowed to strip (repeat for several)")
    p.add_argument("--sign-key", required=True, help="this site's private key (PEM)")
    p.add_argument("--sign-cert", required=True, help="this site's certificate (PEM)")
    p.add_argument("--passphrase-file", help="passphrase of --sign-key")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILE_NAMES,
                   help=PROFILE_HELP)
    p.add_argument("--strength", choices=STRENGTHS, help=STRENGTH_HELP)
    p.add_argument("--logo", help="PNG logo (alpha channel = shape); default: the built-in logo")
    p.add_argument("--seed", type=int, default=0, help="seed of the watermark optimiser")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the engine runs: auto (CUDA when available), cpu or cuda")
    p.add_argument("--destination", help="destination name: with the signing key it makes the protected UIDs "
                   "(same file, same destination: same UIDs); default: the recipient set")
    p.add_argument("--deidentify", choices=["basic"], help="apply the PS3.15 Basic Application Level "
                   "Confidentiality Profile before protection")
    p.add_argument("--restore-identity", action="store_true",
                   help="with --deidentify: strip gives back the identified original "
                   "(default: the de-identified object)")
    p.add_argument("--deidentify-dates", choices=["remove", "shift"], default="remove",
                   help="with --deidentify: dates removed (default) or shifted by a keyed per-patient offset")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    tally = Tally("protected")
    try:
        signer = load_identity(args.sign_key, args.sign_cert, read_passphrase(args.passphrase_file))
        recipients = load_certificates(args.recipient)
        if args.profile not in PROFILE_NAMES:
            raise MiadmarkError(f"unknown profile {args.profile!r} (known: {', '.join(PROFILE_NAMES)})")
        if args.deidentify is None and (args.restore_identity or args.deidentify_dates != "remove"):
            raise MiadmarkError("--restore-identity and --deidentify-dates need --deidentify basic")
        engine = get_engine(Profile(name=args.profile, logo=args.logo, seed=args.seed, strength=args.strength),
                            args.device)
    except (MiadmarkError, ValueError, OSError) as exc:
        print(f"miadmark protect: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    lesions, sources, refused = _lesion_masks(args.inputs, tally)
    inputs = list(iter_inputs(args.inputs, tally.skipped))
    tally.start_progress(len(inputs), args.progress)
    for start in range(0, len(inputs), BATCH):
        loaded = []
        for item in inputs[start:start + BATCH]:
            if item.path in sources:  # a SEG / RTSTRUCT gave masks; it is not an image to watermark
                tally.note(f"lesion mask source {item.path} (not written)")
                continue
            if item.path in refused:  # its header failed already, with the reason
                continue
            try:
                ds = read_dicom(item.path)
                loaded.append((item, ds, mask_for(ds, lesions)))
            except (MiadmarkError, OSError) as exc:
                tally.fail(item.path, str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad file fails alone, its value never echoed
                tally.fail(item.path, str(unexpected_input(exc, "reading the file")))
        results = protect_many([ds for _, ds, _ in loaded], recipients=recipients, signer=signer, engine=engine,
                               lesion_masks=[mask for _, _, mask in loaded], destination=args.destination,
                               deidentify=args.deidentify, restore_identity=args.restore_identity,
                               deidentify_dates=args.deidentify_dates)
        for (item, _, _), result in zip(loaded, results):
            if isinstance(result, MiadmarkError):
                tally.fail(item.path, str(result))
                continue
            try:
                dst = output_path(out_dir, item)
                write_dicom_atomic(result, dst)
            except Exception as exc:  # noqa: BLE001 - OSError (disk), or an element that does not encode
                tally.fail(item.path, f"cannot write output ({safe_reason(exc)})")
                continue
            tally.ok(item.path, dst)
    return tally.summary()


def _lesion_masks(inputs: list[str], tally: Tally) -> tuple[dict, set[Path], set[Path]]:
    """Lesion masks from every SEG / RTSTRUCT among the inputs, those sources' paths, and the paths whose
    header could not tell (failed here, alone, with the element named).

    Headers are read first; sources fully. RTSTRUCT contours are placed on the other inputs by
    their headers. A source that gives no mask is a failure of the run: its lesions are unprotected.
    """
    import pydicom

    sources, images, refused = [], [], set()
    for item in iter_inputs(inputs, []):
        try:
            head = pydicom.dcmread(item.path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except Exception:  # noqa: BLE001 - unreadable files are reported when they are processed
            continue
        try:
            kind = lesion_kind(head)
        except MiadmarkError as exc:  # e.g. a SOP Class UID whose VR is corrupted: this file alone
            tally.fail(item.path, str(exc))
            refused.add(item.path)
            continue
        if kind is not None:
            sources.append(item.path)
        else:
            images.append(head)
    read: dict[Path, object] = {}
    for path in sources:
        try:
            read[path] = read_dicom(path)
        except MiadmarkError as exc:
            tally.fail(path, f"no lesion mask: {exc}")
    path_of = {id(ds): path for path, ds in read.items()}
    merged, unusable = masks_of_sources(list(read.values()), images)
    for ds, reason in unusable:
        tally.fail(path_of[id(ds)], f"no lesion mask: {reason}")
    return merged, set(sources), refused
