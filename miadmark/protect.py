"""The two verbs: protect(dataset) and strip(dataset). Everything else calls these.

protect: optionally de-identify (miadmark.deid), decode pixels exactly, map them to the model
domain, let the engine watermark them, map the changed pixels back to stored values, and attach a
signed, encrypted restoration record (miadmark.record) holding everything needed to rebuild the
original FILE byte for byte. The result has SOP Instance and Series UIDs derived from the
original's with a keyed hash (miadmark.uids: stable per destination), ImageType DERIVED, and is
encoded Explicit VR Little Endian.

strip_bytes: open the record with a recipient key, verify the signer, rebuild the original file
and check it against the record's SHA-256; strip: the same, parsed into a Dataset. Nothing is
returned unless it is exactly the original.

An already protected object given to protect is refused (AlreadyProtectedError): nesting would
make the outer site's key necessary to reach the inner record, and no route needs it.
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from . import __version__
from .deid import Deidentifier
from .derived import mark_derived
from .dicomio import canonical_bytes, dataset_from_bytes, forget_source, original_file_bytes
from .engine import DEFAULT_PROFILE, ImageContext, Profile, get_engine
from .errors import (AlreadyProtectedError, IntegrityError, InvalidInputError, MiadmarkError, NotProtectedError,
                     RecordCorruptError, UntrustedSignerError, unexpected_input)
from .keys import Identity, fingerprint, subject_name
from .limits import check_protectable
from .pixel_payload import ORIGINAL_KINDS, apply_original, apply_payload, encode_original, encode_pixels, word_dtype
from .original_file import cut, join, pixel_value_span
from .pixels import Pixels, decode, from_model, native_pixel_bytes, to_model
from .record import (RECORD_CREATOR, Record, decode_file_meta, decrypt, encode_file_meta, encrypt,
                     recipients_of, sign_record, verify_record)
from .uids import SERIES, SOP_INSTANCE, UidMaker, scope_of, site_secret

if TYPE_CHECKING:
    from .engine.base import Engine

PIXEL_DATA = 0x7FE00010
NATIVE_ONLY_DROP = (0x7FE00001, 0x7FE00002)  # extended offset table: meaningless once native
MARKER_CREATOR = "MIADMARK 1.0"


def is_protected(ds: Dataset) -> bool:
    seq = ds.get(0x04000500)  # by tag: the element, not its value
    return seq is not None and seq.VR == "SQ" and any(  # a forged VR or empty value: no record
        "EncryptedContent" in item for item in seq.value or [])


# ---- protect ------------------------------------------------------------------------------------

def protect(ds: Dataset, *, recipients: Sequence[x509.Certificate], signer: Identity,
            profile: str | Profile = DEFAULT_PROFILE, device: str = "auto",
            lesion_mask: np.ndarray | None = None, engine: Engine | None = None,
            destination: str | None = None, deidentify: str | None = None, restore_identity: bool = False,
            deidentify_dates: str = "remove") -> Dataset:
    """A protected copy of ds (ds is not modified). Raises MiadmarkError with the reason."""
    result = protect_many([ds], recipients=recipients, signer=signer, profile=profile, device=device,
                          lesion_masks=None if lesion_mask is None else [lesion_mask], engine=engine,
                          destination=destination, deidentify=deidentify, restore_identity=restore_identity,
                          deidentify_dates=deidentify_dates)[0]
    if isinstance(result, MiadmarkError):
        raise result
    return result


def protect_many(datasets: Sequence[Dataset], *, recipients: Sequence[x509.Certificate], signer: Identity,
                 profile: str | Profile = DEFAULT_PROFILE, device: str = "auto",
                 lesion_masks: Sequence[np.ndarray | None] | None = None,
                 engine: Engine | None = None, destination: str | None = None, deidentify: str | None = None,
                 restore_identity: bool = False, deidentify_dates: str = "remove",
                 batch_frames: int | None = None) -> list[Dataset | MiadmarkError]:
    """Protect several datasets through one engine; each result is a Dataset or the error for that input.

    Frames of the same size go through the engine together, up to `batch_frames` at a time (None: 64 on a GPU,
    16 on a CPU, where larger batches gain nothing), while the next inputs are decoded and the previous ones get
    their records in other threads (protect_iter): the slowest stage sets the pace.
    destination: the destination's name; with the signer's key it makes the protected UIDs (miadmark.uids):
    the same original for the same destination (or, when None, the same recipient set) gets the same UIDs.
    deidentify: None, or "basic" (PS3.15 Basic Application Level Confidentiality Profile, miadmark.deid)
    applied before protection; restore_identity: whether strip then gives back the identified original
    (True) or the de-identified object (False); deidentify_dates: "remove" (the profile's dummy dates)
    or "shift" (a keyed per-patient shift).
    """
    results: list[Dataset | MiadmarkError | None] = [None] * len(datasets)
    for i, result in protect_iter(datasets, recipients=recipients, signer=signer, profile=profile, device=device,
                                  lesion_masks=lesion_masks, engine=engine, destination=destination,
                                  deidentify=deidentify, restore_identity=restore_identity,
                                  deidentify_dates=deidentify_dates, batch_frames=batch_frames):
        results[i] = result
    return results  # type: ignore[return-value]


def protect_iter(datasets: Iterable[Dataset], *, recipients: Sequence[x509.Certificate], signer: Identity,
                 profile: str | Profile = DEFAULT_PROFILE, device: str = "auto",
                 lesion_masks: Sequence[np.ndarray | None] | None = None, engine: Engine | None = None,
                 destination: str | None = None, deidentify: str | None = None, restore_identity: bool = False,
                 deidentify_dates: str = "remove", batch_frames: int | None = None,
                 encode: Callable[[Dataset], object] | None = None) -> Iterator[tuple[int, object]]:
    """protect_many as a pipeline: (index, result) pairs as each input completes, not in input order.

    Three stages overlap: one thread decodes the next inputs (a bounded window ahead), the calling thread runs
    the engine on batches of up to `batch_frames` frames of one size, one thread builds each watermarked image's
    record and, given `encode` (e.g. miadmark.dicomio.dataset_to_bytes), encodes it. torch's kernels and much of
    numpy's and zstd's work run outside the GIL, so with a free core the engine and the record run side by side
    (on a saturated CPU the pipeline gains nothing: docs/speed.md).
    A result is the protected Dataset (or encode's value) or the MiadmarkError for that input: one bad input
    fails alone, an engine failure on a batch is retried input by input.
    """
    if not recipients:
        raise ValueError("protect needs at least one recipient certificate")
    engine = engine or get_engine(profile, device)
    if batch_frames is None:
        batch_frames = 64 if getattr(engine.device, "type", "cpu") == "cuda" else 16
    secret = site_secret(signer.key)
    uid_maker = UidMaker(secret, scope_of(destination, recipients))
    deid = None if deidentify is None else Deidentifier(deidentify, uid_maker, dates=deidentify_dates)

    def prepare(i: int, ds: Dataset):
        try:
            prep = _prepare(ds, None if lesion_masks is None else lesion_masks[i], deid, restore_identity)
            prep["contexts"] = keyed_contexts(prep["contexts"], secret)
            return i, prep
        except Exception as exc:  # noqa: BLE001 - one bad input fails alone (see unexpected_input)
            return i, unexpected_input(exc, "reading the image")

    def finish(i: int, prep: dict, x_new: np.ndarray, params: list[dict]):
        try:
            prot = _finish(prep, x_new, params, recipients, signer, engine, uid_maker)
            return i, prot if encode is None else encode(prot)
        except Exception as exc:  # noqa: BLE001 - one bad input fails alone
            return i, unexpected_input(exc, "building the protected object")

    decoder = ThreadPoolExecutor(1, thread_name_prefix="protect-decode")
    recorder = ThreadPoolExecutor(1, thread_name_prefix="protect-record")
    inputs = enumerate(datasets)
    decoding: deque = deque()  # futures of prepare, in input order
    recording: deque = deque()  # futures of finish, in engine order
    groups: dict[tuple, list] = {}  # frame geometry -> [(index, prep)] waiting for the engine

    def refill() -> None:  # about two engine batches decoded or decoding ahead, no more (memory)
        while len(decoding) < 2 * batch_frames:
            item = next(inputs, None)
            if item is None:
                return
            decoding.append(decoder.submit(prepare, *item))

    def recorded() -> Iterator[tuple[int, object]]:
        while recording and recording[0].done():
            yield recording.popleft().result()

    try:
        refill()
        while decoding:
            i, prep = decoding.popleft().result()
            refill()
            if isinstance(prep, MiadmarkError):
                yield i, prep
                continue
            key = prep["x"].shape[1:]
            group = groups.setdefault(key, [])
            group.append((i, prep))
            if sum(p["x"].shape[0] for _, p in group) >= batch_frames:
                yield from _watermark(engine, groups.pop(key), recording, recorder, finish)
            yield from recorded()
        for key in list(groups):
            yield from _watermark(engine, groups.pop(key), recording, recorder, finish)
        while recording:
            yield recording.popleft().result()
    finally:
        decoder.shutdown(wait=True, cancel_futures=True)
        recorder.shutdown(wait=True, cancel_futures=True)


def _watermark(engine: Engine, items: list, recording: deque, recorder: ThreadPoolExecutor, finish
               ) -> Iterator[tuple[int, MiadmarkError]]:
    """Run the engine on one batch and hand each image to the record stage; the errors of inputs that fail."""
    batches = [items]
    while batches:
        items = batches.pop(0)
        x = np.concatenate([p["x"] for _, p in items])
        lesion = np.concatenate([p["lesion"] for _, p in items])
        contexts = [ctx for _, p in items for ctx in p["contexts"]]
        try:
            x_new, params = _run_engine(engine, x, lesion, contexts)
        except Exception as exc:  # noqa: BLE001 - an engine failure fails these inputs closed, not the run
            if len(items) > 1:  # one input may be the cause: each alone, so that only it fails
                batches += [[item] for item in items]
                continue
            yield items[0][0], MiadmarkError(f"watermark engine failed ({type(exc).__name__}: {exc})")
            continue
        offset = 0
        for i, prep in items:
            n = prep["x"].shape[0]
            recording.append(recorder.submit(finish, i, prep, x_new[offset:offset + n], params[offset:offset + n]))
            offset += n


def keyed_contexts(contexts: list[ImageContext], secret: bytes) -> list[ImageContext]:
    """Each frame's context with its spread-mark geometry key (engine.spread.mark_key: keyed by the site secret,
    so no two instances or frames share a lattice and outsiders cannot predict one)."""
    from dataclasses import replace

    from .engine.spread_key import mark_key

    return [replace(c, mark_key=mark_key(secret, c.sop_instance_uid, f)) for f, c in enumerate(contexts)]


def _run_engine(engine: Engine, x: np.ndarray, lesion: np.ndarray, contexts: list[ImageContext]
                ) -> tuple[np.ndarray, list[dict]]:
    import torch  # only protect needs it: strip and inspect start without torch

    x_t = torch.from_numpy(x).to(engine.device)
    lesion_t = torch.from_numpy(lesion).to(engine.device) if lesion.any() else None
    out = engine.watermark(x_t, lesion_t, contexts)
    x_new = out.images.detach().to("cpu", torch.float32).numpy()
    if x_new.shape != x.shape or len(out.params) != len(x):
        raise ValueError(f"engine returned shape {x_new.shape} for input {x.shape}")
    if not np.isfinite(x_new).all():
        raise ValueError("engine returned non-finite values")
    return np.clip(x_new, 0.0, 1.0), out.params


def _prepare(source: Dataset, lesion_mask: np.ndarray | None, deid: Deidentifier | None,
             restore_identity: bool) -> dict:
    """source: what protect was given; ds: what is watermarked (source, or its de-identified copy);
    original: what strip gives back (source, or the de-identified copy when identity is not restored)."""
    if is_protected(source):
        raise AlreadyProtectedError("already protected (carries a restoration record); strip it first")
    check_protectable(source)  # parsed (depth-bounded) as it will be re-encoded; the elements rewritten encode
    ds = source if deid is None else deid.apply(source)
    original = source if deid is None or restore_identity else ds
    try:
        original_file = original_file_bytes(original)  # what strip will give back, byte for byte
    except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot write cannot be restored exactly
        raise InvalidInputError(f"the original cannot be encoded ({type(exc).__name__}); not protected") from None
    px = decode(ds)
    x, mapping = to_model(ds, px)
    frames, _, h, w = x.shape
    if lesion_mask is None:
        lesion = np.zeros((frames, h, w), dtype=bool)
    else:
        lesion = np.asarray(lesion_mask, dtype=bool).reshape(-1, h, w)
        if lesion.shape[0] == 1 and frames > 1:
            lesion = np.repeat(lesion, frames, axis=0)
        if lesion.shape[0] != frames:
            raise MiadmarkError(f"lesion mask has {lesion.shape[0]} frames, image has {frames}")
    ctx = ImageContext(modality=str(ds.get("Modality", "")), photometric=px.photometric,
                       sop_instance_uid=str(ds.get("SOPInstanceUID", "")))
    return {"ds": ds, "original": original, "original_file": original_file, "px": px, "x": x,
            "mapping": mapping, "lesion": lesion, "contexts": [ctx] * frames}


def _finish(prep: dict, x_new: np.ndarray, params: list[dict], recipients, signer: Identity,
            engine: Engine, uid_maker: UidMaker) -> Dataset:
    ds, original, original_file = prep["ds"], prep["original"], prep["original_file"]
    px: Pixels = prep["px"]
    new_stored = from_model(px, prep["mapping"], prep["x"], x_new, prep["lesion"])
    lesion = prep["lesion"]
    if lesion.any() and not np.array_equal(new_stored[lesion], px.stored[lesion]):
        raise MiadmarkError("internal error: a lesion pixel changed; refusing to emit")  # never expected

    original_pixels = ds[PIXEL_DATA]  # de-identification leaves Pixel Data as it was
    prot = copy.deepcopy(ds)
    forget_source(prot)
    _drop_group_lengths(prot)
    new_bytes = native_pixel_bytes(ds, px, new_stored)
    if px.native:
        dtype = word_dtype(px.bits_allocated, len(new_bytes))
        spp = px.stored.shape[-1]
        stride = spp if px.planar == 0 and dtype.itemsize * 8 == px.bits_allocated else 1  # one channel's samples
        payload_kind, payload = encode_pixels(bytes(original_pixels.value), new_bytes, dtype, stride)
        word_type = dtype.str
        prot[PIXEL_DATA].value = new_bytes
    else:
        word_type = ""
        payload_kind, payload = encode_original(bytes(original_pixels.value))
        vr = "OB" if px.bits_allocated <= 8 else "OW"
        prot[PIXEL_DATA] = DataElement(PIXEL_DATA, vr, new_bytes)
        for tag in NATIVE_ONLY_DROP:
            if tag in prot:
                del prot[tag]
        if px.stored.shape[-1] == 3:
            prot.PhotometricInterpretation = px.photometric
            prot.PlanarConfiguration = 0
        prot.PixelRepresentation = 1 if px.signed else 0

    new_uid = uid_maker.derive(SOP_INSTANCE, str(ds.get("SOPInstanceUID", "")))
    prot.SOPInstanceUID = new_uid
    prot.file_meta.MediaStorageSOPInstanceUID = new_uid
    if "SeriesInstanceUID" in ds:  # a derived series; the study stays the original's (or the de-identified one)
        prot.SeriesInstanceUID = uid_maker.derive(SERIES, str(ds.SeriesInstanceUID))
    _set_pixel_value_range(prot, px, new_stored)
    prot.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    mark_derived(prot, ds)
    profile_name = engine.profile.name
    prot.DerivationDescription = (f"MIAD-MARK visible adversarial watermark, profile {profile_name}; "
                                  "the original is recoverable only with an authorized key")[:1024]
    marker = prot.private_block(0x0011, MARKER_CREATOR, create=True)
    marker.add_new(0x01, "LO", subject_name(signer.cert)[:64])  # who protected it, readable without a key
    marker.add_new(0x02, "LO", f"miadmark {__version__} {profile_name}"[:64])

    modified, added = _diff(original, prot)
    span = pixel_value_span(original_file, bytes(original_pixels.value))
    record = Record(
        modified=modified,
        params={"engine_version": __version__, "profile": profile_name, "device": str(engine.device),
                "strength": params[0].get("strength") if params else None, "frames": params},
        payload_kind=payload_kind,
        payload=payload,
        added_tags=added + [0x04000500],
        file_meta=encode_file_meta(original.file_meta),
        original_sha256=hashlib.sha256(original_file).hexdigest(),
        protected_uid=new_uid,
        pixel_vr=str(original_pixels.VR),
        word_type=word_type,
        original_file=cut(original_file, span),
        pixel_offset=None if span is None else span[0],
    )
    cms = encrypt(sign_record(record, signer), list(recipients))
    item = Dataset()
    item.EncryptedContentTransferSyntaxUID = ExplicitVRLittleEndian
    item.EncryptedContent = cms
    prot.EncryptedAttributesSequence = DicomSequence([item])
    return prot


def _set_pixel_value_range(prot: Dataset, px: Pixels, new_stored: np.ndarray) -> None:
    """Smallest / Largest (Image) Pixel Value must describe the protected pixels, not the original's.

    The image's are recomputed; the series' are widened to include this image (the rest of the
    series is not known here). Only elements the object already has are touched.
    """
    if px.stored.shape[-1] != 1 or "PixelData" not in prot:  # colour: these elements describe one sample
        return
    low, high = int(new_stored.min()), int(new_stored.max())
    for keyword, value in (("SmallestImagePixelValue", low), ("LargestImagePixelValue", high)):
        if keyword in prot:
            prot[keyword].value = value
    if "SmallestPixelValueInSeries" in prot:
        prot.SmallestPixelValueInSeries = min(low, _as_int(prot.SmallestPixelValueInSeries, low))
    if "LargestPixelValueInSeries" in prot:
        prot.LargestPixelValueInSeries = max(high, _as_int(prot.LargestPixelValueInSeries, high))


def _as_int(value, default: int) -> int:
    if isinstance(value, bytes):  # read Implicit VR before PixelRepresentation was known
        return int.from_bytes(value[:2], "little") if len(value) >= 2 else default
    return default if value is None or value == "" else int(value)


def _drop_group_lengths(ds: Dataset) -> None:
    """Retired group lengths (gggg,0000): every writer drops them, so they are not part of the contract."""
    for tag in [t for t in ds.keys() if t.element == 0 and t.group > 6]:
        del ds[tag]


def _diff(original: Dataset, protected: Dataset) -> tuple[Dataset, list[int]]:
    """Original values of top-level attributes that protect changed or removed; tags it added."""
    modified = Dataset()
    for tag in original.keys():
        if tag == PIXEL_DATA or (tag.element == 0 and tag.group > 6):
            continue
        if tag not in protected or protected[tag].value != original[tag].value:
            elem = copy.deepcopy(original[tag])
            if elem.VR in ("US or SS", "OB or OW", "US or OW", "US or SS or OW"):
                elem = correct_ambiguous_vr_element(elem, original, True)
            modified.add(elem)
    added = [int(tag) for tag in protected.keys() if tag not in original]
    return modified, added


# ---- strip --------------------------------------------------------------------------------------

def open_record(ds: Dataset, keyring: Sequence[Identity]) -> Record:
    """Decrypt and verify the record of a protected dataset (signer trust not checked here)."""
    if not is_protected(ds):
        raise NotProtectedError("not protected: no restoration record (Encrypted Attributes Sequence)")
    item = ds.EncryptedAttributesSequence[0]
    if item.get("EncryptedContentTransferSyntaxUID") != ExplicitVRLittleEndian:
        raise RecordCorruptError("record content transfer syntax is not Explicit VR Little Endian")
    content = item.get("EncryptedContent")
    if not content:
        raise RecordCorruptError("Encrypted Content is empty")
    record = verify_record(decrypt(bytes(content), list(keyring)))
    if record.protected_uid != str(ds.get("SOPInstanceUID", "")):
        raise RecordCorruptError("record belongs to another object (SOP Instance UID differs)")
    return record


def strip_bytes(ds: Dataset, *, keyring: Sequence[Identity], trust: Sequence[x509.Certificate] | None) -> bytes:
    """The original FILE of a protected ds, byte for byte (preamble, file meta, group lengths, padding, VRs
    as protect read them). trust=None accepts any signer (--any-signer)."""
    record = _trusted_record(ds, keyring, trust)
    if record.original_file is None:  # a record made before byte-exact records: pydicom's encoding
        return canonical_bytes(_rebuild_checked(ds, record))
    return _original_file(ds, record)


def strip(ds: Dataset, *, keyring: Sequence[Identity], trust: Sequence[x509.Certificate] | None) -> Dataset:
    """The bit-exact original of a protected ds, as a dataset (it writes back to the exact original
    bytes with miadmark.dicomio.original_file_bytes). trust=None accepts any signer (--any-signer)."""
    record = _trusted_record(ds, keyring, trust)
    if record.original_file is None:
        return _rebuild_checked(ds, record)
    return dataset_from_bytes(_original_file(ds, record))


def _trusted_record(ds: Dataset, keyring: Sequence[Identity], trust: Sequence[x509.Certificate] | None) -> Record:
    record = open_record(ds, keyring)
    if trust is not None and not any(_same_cert(record.signer, t) for t in trust):
        raise UntrustedSignerError(f"signer {subject_name(record.signer)!r} (SHA-256 {fingerprint(record.signer)}) "
                                   "is not in the trust list")
    return record


def _original_file(ds: Dataset, record: Record) -> bytes:
    try:
        data = join(record.original_file, record.pixel_offset, _original_pixel_value(ds, record))
    except MiadmarkError:
        raise
    except Exception as exc:  # noqa: BLE001 - a signed record whose fields do not rebuild an object
        raise RecordCorruptError(f"restoration record does not apply to this object ({type(exc).__name__})") \
            from None
    if hashlib.sha256(data).hexdigest() != record.original_sha256:
        raise IntegrityError("rebuilt original does not match the record's hash (pixels or attributes changed)")
    return data


def _original_pixel_value(ds: Dataset, record: Record) -> bytes:
    if record.payload_kind in ORIGINAL_KINDS:
        return apply_original(record.payload_kind, record.payload)
    if "PixelData" not in ds:
        raise IntegrityError("protected object has no Pixel Data")
    try:
        dtype = np.dtype(record.word_type)
    except TypeError:
        raise RecordCorruptError("record does not apply: its word type is not a numpy type") from None
    if dtype.str not in ("|u1", "<u2", "<u4"):
        raise RecordCorruptError("record word type is not <u1, <u2 or <u4")
    return apply_payload(record.payload_kind, bytes(ds.PixelData), record.payload, dtype)


def _rebuild_checked(ds: Dataset, record: Record) -> Dataset:
    try:
        original = _rebuild(ds, record)
        digest = hashlib.sha256(canonical_bytes(original)).hexdigest()
    except MiadmarkError:
        raise
    except Exception as exc:  # noqa: BLE001 - a signed record whose fields do not rebuild an object
        raise RecordCorruptError(f"restoration record does not apply to this object ({type(exc).__name__})") \
            from None
    if digest != record.original_sha256:
        raise IntegrityError("rebuilt original does not match the record's hash (pixels or attributes changed)")
    return original


def _rebuild(ds: Dataset, record: Record) -> Dataset:
    """Records made before byte-exact records: the original dataset from the Modified Attributes."""
    out = copy.deepcopy(ds)
    file_meta = decode_file_meta(record.file_meta)
    for tag in record.added_tags:
        if tag in out:
            del out[tag]
    for elem in record.modified:
        out[elem.tag] = copy.deepcopy(elem)
    encapsulated = record.payload_kind in ORIGINAL_KINDS and file_meta.TransferSyntaxUID.is_encapsulated
    out[PIXEL_DATA] = DataElement(PIXEL_DATA, record.pixel_vr, _original_pixel_value(ds, record),
                                  is_undefined_length=encapsulated)
    out.file_meta = file_meta
    return out


def _same_cert(a: x509.Certificate | None, b: x509.Certificate) -> bool:
    return a is not None and a.fingerprint(hashes.SHA256()) == b.fingerprint(hashes.SHA256())


def inspect_record(ds: Dataset, keyring: Sequence[Identity] | None = None) -> dict:
    """What a protected object says about itself; with a recipient key, also the watermark parameters."""
    if not is_protected(ds):
        return {"protected": False}
    item = ds.EncryptedAttributesSequence[0]
    info: dict = {"protected": True, "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                  "recipients": [{"issuer": issuer, "serial": f"{serial:x}"}
                                 for issuer, serial in recipients_of(bytes(item.EncryptedContent))]}
    try:
        marker = ds.private_block(0x0011, MARKER_CREATOR)
        info["signer_claimed"] = str(marker[0x01].value)
        info["engine"] = str(marker[0x02].value)
    except KeyError:
        pass
    if keyring:
        record = open_record(ds, keyring)
        info["signer"] = {"subject": record.signer.subject.rfc4514_string(),
                          "issuer": record.signer.issuer.rfc4514_string(),
                          "serial": f"{record.signer.serial_number:x}", "signature": "valid"}
        info["watermark"] = record.params
        info["original_sha256"] = record.original_sha256
        info["restores_attributes"] = [elem.keyword or str(elem.tag) for elem in record.modified]
    return info

__all__ = ["protect", "protect_many", "protect_iter", "strip", "strip_bytes", "is_protected", "open_record",
           "inspect_record", "RECORD_CREATOR"]
