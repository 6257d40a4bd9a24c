"""Where released instances go: a DICOMweb server by STOW-RS, or a folder (file://DIR).

store(datasets) -> {SOP Instance UID: None (stored) or the reason it was refused}; raises
Unavailable when the destination stays away. has(study, sop) answers whether an instance is
already there: the driver asks it, after a crash, about instances whose send was not confirmed.

STOW-RS answers are read by dicomnet.stow, as the gateway and the Orthanc plugin read them, and
retried under the same policy (dicomnet.outcome.RetryPolicy, the `retry:` block): a permanent
refusal (HTTP 400, a 409 naming the instance, a refusing failure reason) fails that instance at
once and only it; a transient one is sent again with backoff, until max_attempts or the patience.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from pydicom.dataset import Dataset

from dicomnet.destinations import handler_for, handlers
from dicomnet.outcome import RetryPolicy, Unreachable
from dicomnet.stow import StowTarget, post_instances
from miadmark.dicomio import dataset_to_bytes, write_dicom_atomic

from .client import dicomweb_client
from .patience import Unavailable, patiently

STORED = None


@handler_for("release", "stow")
class StowSink:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None, verify: bool | str = True,
                 timeout_s: float = 120.0, patience_s: float = 600.0, retry: RetryPolicy = RetryPolicy()):
        self.url = url
        self.client = dicomweb_client(url, headers=headers, verify=verify, timeout_s=timeout_s)  # QIDO-RS
        self.target = StowTarget(url.rstrip("/") + "/studies", "destination (STOW-RS)", dict(headers or {}),
                                 timeout_s=timeout_s, verify=verify)
        self.session = requests.Session()
        self.patience_s = patience_s
        self.retry = retry

    def store(self, datasets: list[Dataset]) -> dict[str, str | None]:
        """One STOW-RS request for the batch, then one for what is worth sending again (backoff), until
        each instance is stored or refused; Unavailable when the destination stays away."""
        waiting = {str(ds.SOPInstanceUID): dataset_to_bytes(ds) for ds in datasets}
        result: dict[str, str | None] = {uid: STORED for uid in waiting}
        deadline = time.monotonic() + self.patience_s
        attempts = 0
        while waiting:
            attempts += 1
            try:
                outcomes = post_instances(self.target, list(waiting.items()), session=self.session)
            except Unreachable as exc:
                if time.monotonic() >= deadline:
                    raise Unavailable(f"destination (STOW-RS) unreachable for {self.patience_s:.0f} s ({exc})") \
                        from None
            else:
                for uid, out in zip(list(waiting), outcomes):
                    if out.ok:
                        del waiting[uid]
                    elif self.retry.state_after(attempts, out.permanent) == "dead" or time.monotonic() >= deadline:
                        result[uid] = f"destination refused it ({out.error}; {attempts} attempt(s))"
                        del waiting[uid]
            if waiting:
                time.sleep(max(0.0, min(self.retry.delay(attempts), deadline - time.monotonic())))
        return result

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


RELEASE_KINDS = tuple(handlers("release"))  # the configured destination kinds a release can send to


def open_sink(dest: str, *, headers: dict[str, str] | None = None, verify: bool | str = True,
              timeout_s: float = 120.0, patience_s: float = 600.0,
              retry: RetryPolicy = RetryPolicy()) -> StowSink | FolderSink:
    parsed = urlparse(dest)
    if parsed.scheme == "file":
        return FolderSink(unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost")
                          else unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return StowSink(dest, headers=headers, verify=verify, timeout_s=timeout_s, patience_s=patience_s,
                        retry=retry)
    raise ValueError(f"--dest {dest!r}: expected a DICOMweb URL (http[s]://...) or file://DIR")
