"""One instance by WADO-RS, in the archive's own transfer syntax (no transcoding: the record keeps
the original bitstream, and an archive that transcodes would change what strip gives back)."""

from __future__ import annotations

from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from miadmark.limits import parse_untrusted

from .listing import InstanceRef
from .patience import patiently

AS_STORED = (("application/dicom", "*"),)


def fetch(client: DICOMwebClient, ref: InstanceRef, patience_s: float) -> Dataset:
    """The instance, fully parsed (an element that does not decode is named: InvalidInputError); Unavailable
    when the source stays away, else the source's error."""
    ds = patiently(lambda: client.retrieve_instance(ref.study, ref.series, ref.sop, media_types=AS_STORED),
                   "source (WADO-RS)", patience_s)
    return parse_untrusted(ds)
