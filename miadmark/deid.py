"""De-identification before protection: the DICOM PS3.15 Basic Application Level Confidentiality Profile.

The profile's table (PS3.15 Table E.1-1, the 2026c edition as shipped by KitwareMedical's
`dicom-anonymizer`) decides what each attribute gets: X removed, Z emptied, D dummy value,
U new UID, and private attributes removed. The actions are ours, applied at every nesting level,
so that the result validates (dciodvfy) whatever the IOD makes of each attribute:
* X removes; Z and X/Z keep the element with a zero-length value (a Type 2 attribute stays present;
  a sequence keeps no item), except an X/Z sequence that is Type 3 wherever defined: removed.
  Overlay Data (X) goes with its whole overlay group (an Overlay Plane needs its data).
* D, Z/D, X/D and X/Z/D give a dummy that is valid for the VR (a date 19000101, a time 000000, a
  name ANONYMIZED...): valid for Type 1 as for Type 2 and 3. An element that was already empty stays
  empty (it holds nothing to hide). A D sequence keeps its items with every value in them replaced.
* X/Z/U* sequences (Referenced Image, Source Image...) are kept with their UIDs replaced, the
  profile's "U" choice: a SEG still points at its images.
* UIDs (U, and D / X/Z/U* on a UI) are keyed derivations (miadmark.uids) of the original UID,
  the site secret and the destination: consistent within a study, across runs and gateway
  restarts (a resend is the same object), unlinkable across destinations and by outsiders.
* dates="shift" (the profile's Retain Longitudinal Temporal Information with Modified Dates
  Option): every DA / DT the table lists is moved back by a keyed per-patient number of days
  (1..3650) instead of being replaced; Patient's Birth Date is still emptied. dates="remove" (the
  default) keeps the table's actions (dates emptied or set to the dummy).
The object records what was applied: Patient Identity Removed YES, De-identification Method, and
the De-identification Method Code Sequence (PS3.16 CID 7050 codes, scheme DCM).

Not covered: text burned into the pixels. An object that declares BurnedInAnnotation YES is
refused (BurnedInAnnotationError; the gateway quarantines it); one that does not declare it is
trusted. Faces in 3D reconstructions, free text in structured reports beyond the table, and
identifying values in non-standard places are not handled either.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from dicomanonymizer.simpledicomanonymizer import (delete, delete_or_empty, delete_or_empty_or_replace,
                                                    delete_or_empty_or_replace_UID, delete_or_replace, empty,
                                                    empty_or_replace, initialize_actions, keep, replace, replace_UID)
from pydicom.dataset import Dataset
from pydicom.valuerep import STR_VR

from .dicomio import forget_source
from .errors import BurnedInAnnotationError, MiadmarkError
from .keys import Identity
from .uids import DEIDENTIFIED, UidMaker, scope_of, site_secret

PROFILES = ("basic",)
DATE_OPTIONS = ("remove", "shift")
TABLE = "dicomfields_2026c"  # PS3.15 Table E.1-1 edition
# the library's table names each action by a function; the profile's letters say what it asks
ACTION_CODES = {delete: "X", empty: "Z", replace: "D", replace_UID: "U", empty_or_replace: "Z/D",
                delete_or_empty: "X/Z", delete_or_replace: "X/D", delete_or_empty_or_replace: "X/Z/D",
                delete_or_empty_or_replace_UID: "X/Z/U*", keep: "K"}
DUMMY_CODES = {"D", "Z/D", "X/D", "X/Z/D"}  # a dummy is valid whatever the attribute's Type
UID_CODES = DUMMY_CODES | {"U", "X/Z/U*"}  # a UI gets a keyed UID
# X/Z sequences that are Type 2 where defined: emptied (no item); the others are Type 3 (Referenced Study
# Sequence): removed, as a Type 3 sequence that is present needs an item
TYPE_2_SEQUENCES = {0x00400555}  # Acquisition Context Sequence
# dummies consistent with the VR (PS3.15 E.1-1 action D) that a validator accepts
DUMMY_TEXT = "ANONYMIZED"
DUMMIES = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y", "DS": "0", "IS": "0",
           "UR": "http://anonymized.invalid"}
# PS3.16 CID 7050 De-identification Method
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option")
SHIFT_DAYS = 3650
OVERLAY_DATA = 0x3000  # (60xx,3000)
BIRTH_DATE = 0x00100030


def deidentify(ds: Dataset, *, signer: Identity, recipients: Sequence[x509.Certificate],
               destination: str | None = None, profile: str = "basic", dates: str = "remove") -> Dataset:
    """De-identify an object a de-identified route sends WITHOUT protection (a SEG / RTSTRUCT lesion
    source forwarded unwatermarked): the same keyed mapping as protect(..., deidentify=...) with the
    same signer, destination and recipients, so its references match the images' de-identified UIDs."""
    return Deidentifier(profile, UidMaker(site_secret(signer.key), scope_of(destination, recipients)),
                        dates=dates).apply(ds)


def profile_rules() -> dict:
    """The table: (group, element[, group mask, element mask]) -> the library's action."""
    return initialize_actions(TABLE)


def profile_codes() -> dict:
    """The table: (group, element[, group mask, element mask]) -> the profile's action letters ("X", "Z/D"...)."""
    return {tag: ACTION_CODES[action] for tag, action in profile_rules().items()}


def dummy_value(vr: str):
    """A non-empty value valid for vr (PS3.15 action D)."""
    if vr in DUMMIES:
        return DUMMIES[vr]
    if vr in STR_VR:  # AE CS LO LT PN SH ST UC UT
        return DUMMY_TEXT
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"):
        return 0
    return bytes(8)  # OB OW OF OD OL OV UN: a length every one of them allows


def _is_empty(value) -> bool:
    return value is None or (not isinstance(value, (int, float)) and len(value) == 0)


class Deidentifier:
    """One de-identification setting for a run (keyed by the run's UidMaker: site secret + destination)."""

    def __init__(self, profile: str, uids: UidMaker, dates: str = "remove") -> None:
        if profile not in PROFILES:
            raise MiadmarkError(f"unknown de-identification profile {profile!r} (known: {', '.join(PROFILES)})")
        if dates not in DATE_OPTIONS:
            raise MiadmarkError(f"unknown date option {dates!r} (known: {', '.join(DATE_OPTIONS)})")
        self.profile, self.uids, self.dates = profile, uids, dates
        self._shift_days = 0
        codes = profile_codes()
        self._codes = {tag: code for tag, code in codes.items() if len(tag) == 2}
        self._repeating = [(tag, code) for tag, code in codes.items() if len(tag) == 4]  # e.g. (50xx,xxxx)

    def apply(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ds (ds is not modified). Pixel Data is left as it is."""
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            raise BurnedInAnnotationError("BurnedInAnnotation is YES: text in the pixels would identify the "
                                          "patient; refused on a de-identified route")
        out = copy.deepcopy(ds)
        forget_source(out)
        patient = str(ds.get("PatientID", "")) + "\0" + str(ds.get("PatientName", ""))
        self._shift_days = 1 + self.uids.keyed_int(b"date shift", patient, SHIFT_DAYS)
        self._apply(out)
        out.remove_private_tags()  # the profile removes every private attribute (at every level)
        if "SOPInstanceUID" in out and hasattr(out, "file_meta"):
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        self._mark(out)
        return out

    def _apply(self, ds: Dataset) -> None:
        """The table's action for each element of ds, then down every sequence that is kept.

        (The library's own loop asks for each of the table's 655 tags at one level, and walks the whole
        tree for its repeating groups: 20 s on a 64-frame enhanced MR; this is one pass over the elements.)
        """
        for tag in list(ds.keys()):
            if tag not in ds:
                continue  # removed with its overlay
            key = (tag.group, tag.element)
            code = self._codes.get(key) or self._repeating_code(key)
            if code is not None:
                self._act(ds, ds[tag], code)
            elem = ds.get(tag)
            if elem is not None and elem.VR == "SQ" and elem.value is not None:
                for item in elem.value:
                    self._apply(item)

    def _repeating_code(self, key: tuple[int, int]) -> str | None:
        group, element = key
        for (rule_group, rule_element, group_mask, element_mask), code in self._repeating:
            if group & group_mask == rule_group & group_mask and element & element_mask == rule_element & element_mask:
                return code
        return None

    def _act(self, ds: Dataset, elem, code: str) -> None:
        """One element's action. The conditional actions take the choice that conforms whatever the
        attribute's Type in the IOD: X/Z empties (Type 2 stays present), */D gives a dummy (Type 1)."""
        empty = _is_empty(elem.value)
        if code == "K":
            return
        if self.dates == "shift" and elem.VR in ("DA", "DT") and not empty and elem.tag != BIRTH_DATE:
            elem.value = _shifted(elem.value, self._shift_days)
        elif elem.tag.element == OVERLAY_DATA and 0x6000 <= elem.tag.group <= 0x601E and code == "X":
            for tag in [t for t in ds.keys() if t.group == elem.tag.group]:
                del ds[tag]  # the whole overlay: an Overlay Plane without its (Type 1) data is invalid
        elif code == "X" or code == "X/Z" and elem.VR == "SQ" and elem.tag not in TYPE_2_SEQUENCES:
            del ds[elem.tag]
        elif elem.VR == "UI" and code in UID_CODES:
            self._new_uids(elem)  # an empty one too: a Type 1 UID gets a value the file can be written with
        elif empty:
            return  # a zero-length value hides nothing and stays as valid as it was
        elif code == "X/Z/U*" and elem.VR == "SQ":
            return  # the references are kept, their UIDs replaced (the table applies inside, see _apply)
        elif code in DUMMY_CODES:
            self._dummy(elem)
        else:  # Z, X/Z, U or X/Z/U* on a VR that holds no UID
            elem.value = [] if elem.VR == "SQ" else "" if elem.VR in STR_VR else None

    def _new_uids(self, elem) -> None:
        # an empty UID is derived from its tag: an empty Study and SOP Instance UID stay distinct
        values = elem.value if elem.VM > 1 else [elem.value or f"empty {elem.tag}"]
        new = [self.uids.derive(DEIDENTIFIED, str(v)) for v in values]
        elem.value = new if elem.VM > 1 else new[0]

    def _dummy(self, elem) -> None:
        """D: a dummy for the VR; a sequence keeps its items with every value in them replaced."""
        if elem.VR != "SQ":
            elem.value = dummy_value(elem.VR)
            return
        for item in elem.value:
            for inner in item:
                if _is_empty(inner.value):
                    continue
                if inner.VR == "UI":
                    self._new_uids(inner)
                else:
                    self._dummy(inner)

    def _mark(self, ds: Dataset) -> None:
        """PS3.15 E.1.1: Patient Identity Removed YES, and the method with the options applied (CID 7050)."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"PS3.15 Basic Profile, Table E.1-1 {TABLE[-5:]}; dates {self.dates}"  # LO: 64
        codes = [BASIC_PROFILE_CODE] + ([MODIFIED_DATES_CODE] if self.dates == "shift" else [])
        items = []
        for value, scheme, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if self.dates == "shift" else "REMOVED"


def _shifted(value, days: int):
    """DA / DT value(s) moved back by days; a value that does not parse is removed (emptied)."""
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return [_shifted(v, days) for v in value]
    text = str(value)
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date() - dt.timedelta(days=days)
    except (ValueError, OverflowError):  # not a date, or before year 1
        return ""
    return day.strftime("%Y%m%d") + text[8:]
