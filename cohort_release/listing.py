"""The cohort: every instance of the studies a QIDO-RS query (or a list of Study UIDs) names."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dicomweb_client.api import DICOMwebClient

from .patience import patiently

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


@dataclass(frozen=True, order=True)
class InstanceRef:
    study: str
    series: str
    sop: str


def parse_query(items: Iterable[str]) -> dict[str, str]:
    """['StudyDate=20240101-20241231', 'ModalitiesInStudy=CT'] -> QIDO search filters."""
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--query {item!r}: expected KEYWORD=VALUE (e.g. StudyDate=20240101-20241231)")
        filters[key.strip()] = value.strip()
    return filters


def read_study_list(path: str) -> list[str]:
    """One Study Instance UID per line; blank lines and # comments ignored."""
    with open(path, encoding="utf-8") as fh:
        return [line.split("#", 1)[0].strip() for line in fh if line.split("#", 1)[0].strip()]


def list_cohort(client: DICOMwebClient, *, filters: dict[str, str] | None = None,
                studies: list[str] | None = None, patience_s: float = 600.0) -> list[InstanceRef]:
    """Every instance of the cohort, sorted (study, series, SOP UID) so that batches are series runs."""
    if studies is None:
        found = patiently(lambda: client.search_for_studies(search_filters=filters or {}, get_remaining=True),
                          "source (QIDO-RS studies)", patience_s)
        studies = [_value(study, STUDY_UID) for study in found]
    refs: set[InstanceRef] = set()
    for study in dict.fromkeys(studies):
        refs.update(_instances(client, study, patience_s))
    return sorted(refs)


def _instances(client: DICOMwebClient, study: str, patience_s: float) -> Iterator[InstanceRef]:
    found = patiently(lambda: client.search_for_instances(study_instance_uid=study, get_remaining=True),
                      f"source (QIDO-RS instances of study {study})", patience_s)
    for item in found:
        yield InstanceRef(study, _value(item, SERIES_UID), _value(item, SOP_UID))


def _value(item: dict, tag: str) -> str:
    try:
        return str(item[tag]["Value"][0])
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"QIDO-RS answer without ({tag[:4]},{tag[4:]})") from None
