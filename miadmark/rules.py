"""Routing rules: which destination may get what, decided per instance.

API (stable; the Orthanc plugin and dicom_node import it):

    from miadmark.config import load_config
    from miadmark.rules import decide, route, destinations_for, Decision, PROTECT, PASS, BLOCK

    decide(cfg, ds, *, destination="research", called_ae="RESEARCH", calling_ae="PACS") -> Decision
        The first rule (in file order) whose `send_to` holds `destination` (a rule without send_to
        holds every destination) and whose `when` matches. destination=None ignores send_to and
        `when: {destination: ...}`. No rule matches -> BLOCK (unmatched traffic is never passed).
    route(cfg, ds, *, called_ae, calling_ae) -> list[Decision]
        The gateway's question: destinations_for(...) then decide() for each (one Decision per
        destination, destinations=(name,)). No candidate destination -> [one BLOCK decision].
    destinations_for(cfg, *, called_ae, calling_ae=None, dataset=None) -> list[str]
        Destination names (file order, no repeats) named by the send_to of the non-block rules whose
        `when` matches. dataset=None: conditions on DICOM attributes are taken as matching (the
        destinations a called AE *may* reach).

    rule_matches(rule, ds, *, destination=None, called_ae=None, calling_ae=None, unknown_matches=False)
        -> (bool, reasons): does one rule's `when` hold (send_to is not looked at)? ds=None with
        unknown_matches=True takes conditions on DICOM attributes as holding (False: as failing).
        (`_match` is the same function under its old name, kept for existing callers.)

    Decision (frozen dataclass):
        action        "protect" | "pass" | "block"
        rule_index    0-based index into cfg.rules, None when no rule matched
        destinations  tuple of destination names (those of the rule, or the one asked about)
        recipients    tuple of certificate Paths (protect only)
        profile       watermark profile for the core: the rule's name, with its strength as "NAME:STRENGTH"
                      (engine.profile_spec; ":STRENGTH" for the default profile), or None (core default)
        strength      the rule's strength (discreet | standard | strong) or None (the default, standard)
        deidentify    None or "basic": de-identify before protection (pass to protect(deidentify=...))
        restore_identity, deidentify_dates   the rule's options for that (protect(restore_identity=...,
                      deidentify_dates=...))
        reason        one line for people: "rule 1 (line 14): called_ae 'RESEARCH' = 'RESEARCH'"
        rule_name     the rule's `name`, if any

`when` keys: called_ae, calling_ae, destination, modality (= Modality), or any DICOM keyword.
A value is matched as: "/regex/" (Python re, the whole value must match), a glob when it holds
* ? or [ (fnmatch, case-sensitive), else exact text. A list means any of its entries. A
multi-valued attribute matches when its whole text ("A\\B") or any single value matches. An
attribute absent from the dataset never matches. Numbers compare by their text.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .config import Config, Rule
from .engine.profile import profile_spec

PROTECT, PASS, BLOCK = "protect", "pass", "block"


@dataclass(frozen=True)
class Decision:
    action: str
    rule_index: int | None
    destinations: tuple[str, ...]
    recipients: tuple[Path, ...] = ()
    profile: str | None = None
    reason: str = ""
    rule_name: str | None = None
    deidentify: str | None = None
    restore_identity: bool = False
    deidentify_dates: str = "remove"
    strength: str | None = None

    @property
    def rule_label(self) -> str:
        if self.rule_index is None:
            return "default"
        return self.rule_name or f"rule {self.rule_index + 1}"


_ANY = object()  # "unknown here": a condition on it is taken as matching


def decide(config: Config, dataset: Dataset | None, *, destination: str | None = None,
           called_ae: str | None = None, calling_ae: str | None = None) -> Decision:
    for index, rule in enumerate(config.rules):
        if destination is not None and rule.send_to is not None and destination not in rule.send_to:
            continue
        matched, why = _match(rule, dataset, destination=destination, called_ae=called_ae, calling_ae=calling_ae)
        if matched:
            return _decision(index, rule, why, destination)
    where = f" to {destination}" if destination else ""
    return Decision(BLOCK, None, (destination,) if destination else (),
                    reason=f"no rule matches{where} (unmatched traffic is blocked)")


def route(config: Config, dataset: Dataset | None, *, called_ae: str | None,
          calling_ae: str | None = None) -> list[Decision]:
    names = destinations_for(config, called_ae=called_ae, calling_ae=calling_ae, dataset=dataset, _strict=True)
    if not names:
        first = decide(config, dataset, destination=None, called_ae=called_ae, calling_ae=calling_ae)
        if first.action == BLOCK:
            return [first]
        return [Decision(BLOCK, None, (), reason="no rule names a destination for this traffic (blocked)")]
    return [decide(config, dataset, destination=name, called_ae=called_ae, calling_ae=calling_ae)
            for name in names]


def destinations_for(config: Config, *, called_ae: str | None, calling_ae: str | None = None,
                     dataset: Dataset | None = None, _strict: bool = False) -> list[str]:
    names: list[str] = []
    for rule in config.rules:
        if rule.action == BLOCK or not rule.send_to:
            continue
        matched, _ = _match(rule, dataset, destination=None, called_ae=called_ae, calling_ae=calling_ae,
                            unknown_matches=dataset is None and not _strict)
        if matched:
            names += [n for n in rule.send_to if n not in names]
    return names


# ----------------------------------------------------------------------------------------- matching

def rule_matches(rule: Rule, dataset: Dataset | None, *, destination: str | None = None,
                 called_ae: str | None = None, calling_ae: str | None = None,
                 unknown_matches: bool = False) -> tuple[bool, list[str]]:
    return _match(rule, dataset, destination=destination, called_ae=called_ae, calling_ae=calling_ae,
                  unknown_matches=unknown_matches)


def _decision(index: int, rule: Rule, why: list[str], destination: str | None) -> Decision:
    where = (f"rule {index + 1}" + (f" {rule.name!r}" if rule.name else "")
             + (f" (line {rule.line})" if rule.line else ""))
    reason = where + ": " + ("; ".join(why) if why else "matches everything")
    dests = (destination,) if destination is not None else tuple(rule.send_to or ())
    return Decision(rule.action, index, dests, tuple(rule.recipients), profile_spec(rule.profile, rule.strength),
                    reason, rule.name, rule.deidentify, rule.restore_identity, rule.deidentify_dates, rule.strength)


def _match(rule: Rule, dataset, *, destination, called_ae, calling_ae, unknown_matches: bool = False):
    why: list[str] = []
    for key, pattern in rule.when.items():
        if key == "destination":
            value = destination if destination is not None else _ANY
        elif key == "called_ae":
            value = _ae(called_ae)
        elif key == "calling_ae":
            value = _ae(calling_ae)
        elif dataset is None:
            value = _ANY if unknown_matches else None
        else:
            value = _attribute(dataset, "Modality" if key == "modality" else key)
        if value is _ANY:
            continue
        ok, how = _compare(value, pattern)
        if not ok:
            return False, []
        why.append(f"{key} {how}")
    return True, why


def _ae(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


def _attribute(ds: Dataset, keyword: str):
    try:
        if keyword not in ds:
            return None
        value = ds[keyword].value
    except Exception:  # noqa: BLE001 - an undecodable element simply does not match
        return None
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return None  # binary attributes are not matched
    return str(value)


def _compare(value, pattern) -> tuple[bool, str]:
    if value is None:
        return False, ""
    patterns = pattern if isinstance(pattern, list) else [pattern]
    candidates = [value] if isinstance(value, str) else ["\\".join(value), *value]
    for p in patterns:
        text = _text(p)
        for candidate in candidates:
            ok, kind = _one(candidate, text)
            if ok:
                return True, f"{candidate!r} {kind} {text!r}"
    return False, ""


def _one(value: str, pattern: str) -> tuple[bool, str]:
    if len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/"):
        return _regex(pattern[1:-1]).fullmatch(value) is not None, "matches regex"
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(value, pattern), "matches glob"
    return value == pattern, "="


def _text(p) -> str:
    if isinstance(p, float) and p.is_integer():
        return str(int(p))
    return str(p)


@lru_cache(maxsize=256)
def _regex(expr: str) -> re.Pattern:
    return re.compile(expr)
