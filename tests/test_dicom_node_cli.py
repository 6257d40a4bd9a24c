"""`miadmark rules check`, `rules test`, `queue status` as a radiology IT person runs them."""

from __future__ import annotations

from pathlib import Path

from miadmark.cli import main

CT = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314"
             / "data").glob("*.dcm"))

CONFIG = """\
destinations:
  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 11113}
  archive:  {ae_title: ARCHIVE, host: 127.0.0.1, port: 11114}
gateway: {spool: spool/}
rules:
  - when: {called_ae: ARCHIVE, modality: CT}
    send_to: [archive]
    action: pass
  - action: block
"""


def test_rules_check_ok_and_bad(tmp_path, capsys):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(CONFIG)
    assert main(["rules", "check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "OK: 2 destination(s), 2 rule(s)" in out and "rule 1 (line 6)" in out
    cfg.write_text(CONFIG.replace("send_to: [archive]", "send_to: [archiv]"))
    assert main(["rules", "check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:7: rules[0].send_to: unknown destination 'archiv'" in err


def test_rules_test_explains_the_match(tmp_path, capsys):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(CONFIG)
    assert main(["rules", "test", "--config", str(cfg), "--called-ae", "ARCHIVE", str(CT[0])]) == 0
    out = capsys.readouterr().out
    assert "archive: pass (rule 1 (line 6): called_ae 'ARCHIVE' = 'ARCHIVE'; modality 'CT' = 'CT')" in out
    assert main(["rules", "test", "--config", str(cfg), "--called-ae", "RESEARCH", str(CT[0])]) == 0
    assert ": -: block (rule 2 (line 9): matches everything)" in capsys.readouterr().out


def test_queue_status_empty_and_filled(tmp_path, capsys):
    from dicomnet.queue import NewJob, Queue
    cfg = tmp_path / "site.yaml"
    cfg.write_text(CONFIG)
    assert main(["queue", "status", "--config", str(cfg)]) == 0
    assert "empty" in capsys.readouterr().out
    q = Queue(tmp_path / "spool" / "queue.sqlite")
    q.add(file="objects/1.dcm", sop_uid="1", sop_class="1.2", transfer_syntax="1.2.840.10008.1.2", study_uid="2",
          series_uid="3", calling_ae="PACS", called_ae="ARCHIVE", jobs=[NewJob("archive", "pass", "rule 1")])
    assert main(["queue", "status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "archive" in out and " 1 " in out
