"""Routing rules: first match wins, exact/glob/regex on AE titles and any keyword, unmatched is blocked."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from miadmark.config import parse_config
from miadmark.rules import BLOCK, PASS, PROTECT, decide, destinations_for, route

CONFIG = """\
identity: {key: k.pem, cert: c.pem}
destinations:
  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 11113}
  partner:  {ae_title: PARTNER, host: 127.0.0.1, port: 11115}
  archive:  {ae_title: ARCHIVE, host: 127.0.0.1, port: 11114}
  cloud:    {stow_url: "http://127.0.0.1:8042/dicom-web/studies"}
rules:
  - name: no-sr-out
    when: {modality: [SR, KO]}
    action: block
  - when: {called_ae: RESEARCH, StudyDescription: "CHEST*"}
    send_to: [research, partner]
    action: protect
    recipients: [r.pem, p.pem]
    profile: plain
  - when: {called_ae: "/ARCH(IVE)?/", calling_ae: [PACS, "CT?"]}
    send_to: [archive]
    action: pass
  - when: {called_ae: RESEARCH}
    send_to: [archive]
    action: pass
  - when: {called_ae: CLOUD, ImageType: "DERIVED"}
    send_to: [cloud]
    action: pass
  - when: {called_ae: CLOUD}
    send_to: [cloud]
    action: protect
    recipients: [r.pem]
  - action: block
"""


@pytest.fixture(scope="module")
def cfg():
    return parse_config(CONFIG, base=Path("/site"), check_files=False)


def ct(**kw) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.StudyDescription = "CHEST W/O"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_first_match_protect_with_recipients_and_reason(cfg):
    d = decide(cfg, ct(), destination="research", called_ae="RESEARCH", calling_ae="PACS")
    assert d.action == PROTECT and d.rule_index == 1
    assert d.recipients == (Path("/site/r.pem"), Path("/site/p.pem"))
    assert d.profile == "plain" and d.destinations == ("research",)
    assert "rule 2 (line 11)" in d.reason and "called_ae 'RESEARCH' = 'RESEARCH'" in d.reason
    assert "matches glob 'CHEST*'" in d.reason


def test_block_rule_wins_before_later_rules(cfg):
    d = decide(cfg, ct(Modality="SR"), destination="research", called_ae="RESEARCH")
    assert d.action == BLOCK and d.rule_index == 0 and d.rule_label == "no-sr-out"


def test_regex_and_glob_list_on_ae_titles(cfg):
    assert decide(cfg, ct(), destination="archive", called_ae="ARCH", calling_ae="CT1").action == PASS
    assert decide(cfg, ct(), destination="archive", called_ae="ARCHIVE ", calling_ae=b"PACS").action == PASS
    # regex must match the whole value
    assert decide(cfg, ct(), destination="archive", called_ae="XARCHIVE", calling_ae="PACS").action == BLOCK
    assert decide(cfg, ct(), destination="archive", called_ae="ARCHIVE", calling_ae="CT12").action == BLOCK


def test_multivalued_attribute_matches_any_value(cfg):
    derived = ct(ImageType=["DERIVED", "SECONDARY"])
    assert decide(cfg, derived, destination="cloud", called_ae="CLOUD").action == PASS
    assert decide(cfg, ct(), destination="cloud", called_ae="CLOUD").action == PROTECT


def test_absent_attribute_never_matches(cfg):
    ds = ct()
    del ds.StudyDescription
    d = decide(cfg, ds, destination="research", called_ae="RESEARCH")
    assert d.action == BLOCK and d.rule_index == 6


def test_unmatched_is_blocked(cfg):
    bare = parse_config("destinations: {a: {ae_title: A, host: h, port: 1}}\n"
                        "rules: [{when: {called_ae: A}, send_to: [a], action: pass}]\n", check_files=False)
    d = decide(bare, ct(), destination="a", called_ae="B")
    assert d.action == BLOCK and d.rule_index is None and "no rule matches" in d.reason
    assert route(bare, ct(), called_ae="B") == [d.__class__(BLOCK, None, (), reason=d.reason.replace(" to a", ""))]


def test_route_decides_each_destination(cfg):
    decisions = route(cfg, ct(), called_ae="RESEARCH", calling_ae="PACS")
    assert [(d.destinations, d.action) for d in decisions] == [
        (("research",), PROTECT), (("partner",), PROTECT), (("archive",), PASS)]
    blocked = route(cfg, ct(Modality="SR"), called_ae="RESEARCH")
    assert {d.action for d in blocked} == {BLOCK}


def test_destinations_for_called_ae(cfg):
    assert destinations_for(cfg, called_ae="RESEARCH") == ["research", "partner", "archive"]
    assert destinations_for(cfg, called_ae="CLOUD") == ["cloud"]
    assert destinations_for(cfg, called_ae="NOBODY") == []
    other = ct(StudyDescription="HEAD")
    assert destinations_for(cfg, called_ae="RESEARCH", dataset=other) == ["archive"]


def test_orthanc_style_rule_without_when(tmp_path):
    cfg = parse_config("identity: {key: k, cert: c}\n"
                       "destinations: {research: {orthanc_modality: research}, partner: {orthanc_modality: partner}}\n"
                       "rules:\n  - send_to: [research]\n    action: protect\n    recipients: [r.pem]\n",
                       check_files=False)
    assert decide(cfg, ct(), destination="research").action == PROTECT
    assert decide(cfg, ct(), destination="partner").action == BLOCK
    assert decide(cfg, ct(), destination="elsewhere").action == BLOCK


def test_destination_key_and_numbers(tmp_path):
    cfg = parse_config("destinations: {a: {ae_title: A, host: h, port: 1}, b: {ae_title: B, host: h, port: 2}}\n"
                       "rules:\n  - when: {destination: 'a', SeriesNumber: 3}\n    send_to: [a, b]\n    action: pass\n",
                       check_files=False)
    ds = ct(SeriesNumber=3)
    assert decide(cfg, ds, destination="a").action == PASS
    assert decide(cfg, ds, destination="b").action == BLOCK
    assert decide(cfg, ct(SeriesNumber=4), destination="a").action == BLOCK


def test_rule_matches_public_helper(cfg):
    from miadmark.rules import rule_matches
    rule = cfg.rules[1]  # called_ae RESEARCH and StudyDescription CHEST*
    assert rule_matches(rule, None, called_ae="RESEARCH", unknown_matches=True)[0]
    assert not rule_matches(rule, None, called_ae="RESEARCH", unknown_matches=False)[0]
    ok, why = rule_matches(rule, ct(), called_ae="RESEARCH")
    assert ok and len(why) == 2
