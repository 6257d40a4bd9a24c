"""De-identification before protection: the DICOM PS3.15 Basic Application Level Confidentiality Profile.

The profile's table (PS3.15 Table E.1-1, the 2026c edition as shipped by KitwareMedical's
`dicom-anonymizer`) decides what each attribute gets: X removed, Z emptied, D dummy value,
U new UID, and private attributes removed. Applied here at every nesting level with the
library's actions (the library's own loop applies its table to the top level only). Two things are ours, on purpose:
* X/Z/U* sequences (Referenced Image, Source Image...) are kept with their UIDs replaced, the
  profile's "U" choice, not emptied as the library does: a SEG still points at its images.
* UIDs (U, and D / X/Z/U* on a UI) are keyed derivations (miadmark.uids) of the original UID,
  the site secret and the destination: consistent within a study, across runs and gateway
  restarts (a resend is the same object), unlinkable across destinations and by outsiders.
* dates="shift" (the profile's Retain Longitudinal Temporal Information with Modified Dates
  Option): every DA / DT the table lists is moved back by a keyed per-patient number of days
  (1..3650) instead of being replaced; Patient's Birth Date is still removed. dates="remove" (the
  default) keeps the table's actions (dates emptied or set to a dummy).

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
from dicomanonymizer.simpledicomanonymizer import (delete_or_empty_or_replace,
                                                    delete_or_empty_or_replace_UID, delete_or_replace,
                                                    empty_or_replace, initialize_actions, replace, replace_UID)
from pydicom.dataset import Dataset

from .dicomio import forget_source
from .errors import BurnedInAnnotationError, MiadmarkError
from .keys import Identity
from .uids import DEIDENTIFIED, UidMaker, scope_of, site_secret

PROFILES = ("basic",)
DATE_OPTIONS = ("remove", "shift")
TABLE = "dicomfields_2026c"  # PS3.15 Table E.1-1 edition
# actions that give a UI a (new) value: those get a keyed UID instead of the library's random one
UID_ACTIONS = {replace_UID, delete_or_empty_or_replace_UID, replace, empty_or_replace, delete_or_replace,
               delete_or_empty_or_replace}
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option")
SHIFT_DAYS = 3650
BIRTH_DATE = (0x0010, 0x0030)


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


class Deidentifier:
    """One de-identification setting for a run (keyed by the run's UidMaker: site secret + destination)."""

    def __init__(self, profile: str, uids: UidMaker, dates: str = "remove") -> None:
        if profile not in PROFILES:
            raise MiadmarkError(f"unknown de-identification profile {profile!r} (known: {', '.join(PROFILES)})")
        if dates not in DATE_OPTIONS:
            raise MiadmarkError(f"unknown date option {dates!r} (known: {', '.join(DATE_OPTIONS)})")
        self.profile, self.uids, self.dates = profile, uids, dates
        self._shift_days = 0
        rules = {tag: self._wrap(action, tag) for tag, action in profile_rules().items()}
        self._rules = {tag: action for tag, action in rules.items() if len(tag) == 2}
        self._repeating = [(tag, action) for tag, action in rules.items() if len(tag) == 4]  # e.g. (50xx,xxxx)

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
            key = (tag.group, tag.element)
            action = self._rules.get(key) or self._repeating_rule(key)
            if action is not None:
                action(ds, key)
            elem = ds.get(tag)
            if elem is not None and elem.VR == "SQ" and elem.value is not None:
                for item in elem.value:
                    self._apply(item)

    def _repeating_rule(self, key: tuple[int, int]):
        group, element = key
        for (rule_group, rule_element, group_mask, element_mask), action in self._repeating:
            if group & group_mask == rule_group & group_mask and element & element_mask == rule_element & element_mask:
                return action
        return None

    def _wrap(self, action, tag):
        def run(dataset: Dataset, where) -> None:
            elem = dataset.get(where)
            if elem is None or elem.value is None or elem.value == "":
                action(dataset, where)
            elif elem.VR == "SQ" and action is delete_or_empty_or_replace_UID:
                pass  # X/Z/U*: keep the references, their UIDs replaced (the table applies inside, see _apply)
            elif elem.VR == "UI" and action in UID_ACTIONS:
                values = elem.value if elem.VM > 1 else [elem.value]
                new = [self.uids.derive(DEIDENTIFIED, str(v)) for v in values]
                elem.value = new if elem.VM > 1 else new[0]
            elif self.dates == "shift" and elem.VR in ("DA", "DT") and tuple(tag[:2]) != BIRTH_DATE:
                elem.value = _shifted(elem.value, self._shift_days)
            else:
                action(dataset, where)
        return run

    def _mark(self, ds: Dataset) -> None:
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
