"""Where released instances go: a DICOMweb server by STOW-RS, or a folder (file://DIR).

store(datasets) -> {SOP Instance UID: None (stored) or the reason it was refused}; raises
Unavailable when the destination stays away. has(study, sop) answers whether an instance is
already there: the driver asks it, after a crash, about instances whose send was not confirmed.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from pydicom.dataset import Dataset

from miadmark.dicomio import write_dicom_atomic

from .client import dicomweb_client
from .patience import patiently

STORED = None


class StowSink:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None, verify: bool | str = True,
                 timeout_s: float = 120.0, patience_s: float = 600.0):
        self.url = url
        self.client = dicomweb_client(url, headers=headers, verify=verify, timeout_s=timeout_s)
        self.patience_s = patience_s

    def store(self, datasets: list[Dataset]) -> dict[str, str | None]:
        """One STOW-RS request for the batch; per-instance failures are read from the answer."""
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        try:
            answer = patiently(lambda: self.client.store_instances(datasets), "destination (STOW-RS)",
                               self.patience_s)
        except requests.HTTPError as exc:  # the whole request refused: every instance gets the reason
            status = exc.response.status_code if exc.response is not None else "?"
            return {uid: f"destination refused the STOW-RS request (HTTP {status})" for uid in uids}
        outcome: dict[str, str | None] = {uid: STORED for uid in uids}
        for item in getattr(answer, "FailedSOPSequence", []) or []:
            uid = str(getattr(item, "ReferencedSOPInstanceUID", ""))
            if uid in outcome:
                outcome[uid] = f"destination refused it (failure reason {getattr(item, 'FailureReason', '?')})"
        return outcome

    def has(self, study: str, sop: str) -> bool:
        found = patiently(lambda: self.client.search_for_instances(
            study_instance_uid=study, search_filters={"SOPInstanceUID": sop}), "destination (QIDO-RS)",
            self.patience_s)
        return any(sop in str(item.get("00080018", {}).get("Value", [])) for item in found)


class FolderSink:
    """DIR/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm, each written durably (temp, fsync, rename)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path_of(self, study: str, series: str, sop: str) -> Path:
        return self.folder / study / series / f"{sop}.dcm"

    def store(self, datasets: list[Dataset]) -> dict[str, str | None]:
        outcome: dict[str, str | None] = {}
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            try:
                write_dicom_atomic(ds, self.path_of(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid))
                outcome[uid] = STORED
            except (OSError, ValueError) as exc:
                outcome[uid] = f"cannot write: {type(exc).__name__}: {exc}"
        return outcome

    def has(self, study: str, sop: str) -> bool:
        return any((self.folder / study).glob(f"*/{sop}.dcm"))


def open_sink(dest: str, *, headers: dict[str, str] | None = None, verify: bool | str = True,
              timeout_s: float = 120.0, patience_s: float = 600.0) -> StowSink | FolderSink:
    parsed = urlparse(dest)
    if parsed.scheme == "file":
        return FolderSink(unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost")
                          else unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return StowSink(dest, headers=headers, verify=verify, timeout_s=timeout_s, patience_s=patience_s)
    raise ValueError(f"--dest {dest!r}: expected a DICOMweb URL (http[s]://...) or file://DIR")
