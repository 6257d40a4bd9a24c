"""The command line explains itself: --version, help for every option, choices listed, log options."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from test_ops_metrics import CT, site_yaml

from miadmark import __version__
from miadmark.cli import build_parser, main
from miadmark.engine import PROFILE_NAMES


def subparsers(parser: argparse.ArgumentParser, prefix: str = "miadmark"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, f"{prefix} {name}")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"miadmark {__version__}"


def test_every_command_help_opens_with_its_one_line_description(capsys):
    parser = build_parser()
    listed = [(where, sub) for where, sub in subparsers(parser) if where != "miadmark"]
    assert any(where == "miadmark gateway" for where, _ in listed)
    for where, sub in listed:
        assert sub.description, f"{where} --help has no description"
    with pytest.raises(SystemExit):
        main(["gateway", "--help"])
    text = capsys.readouterr().out
    assert "Run the protecting DICOM gateway" in text.split("options:")[0], text


def test_every_option_has_help_and_lists_its_choices():
    missing, unlisted = [], []
    for where, parser in subparsers(build_parser()):
        text = parser.format_help()
        assert "miadmark.commands" not in text and "register()" not in text, f"{where}: developer text in --help"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if not action.help:
                missing.append(f"{where} {name}")
            if action.choices and not all(str(c) in text for c in action.choices):
                unlisted.append(f"{where} {name}")
    assert not missing, f"options without help: {missing}"
    assert not unlisted, f"choices not shown: {unlisted}"
    for where, parser in subparsers(build_parser()):
        for action in parser._actions:
            if "--profile" in action.option_strings:
                assert set(action.choices) == set(PROFILE_NAMES), where
            if "--device" in action.option_strings:
                assert set(action.choices) == {"auto", "cpu", "cuda"}, where


def test_gateway_on_a_receiver_only_file_says_so(tmp_path, capsys):
    cfg = tmp_path / "rx.yaml"
    cfg.write_text("receiver:\n  store: received/\n  quarantine: quarantine/\n")
    assert main(["gateway", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no destinations and no rules" in err and "miadmark receive" in err
    plugin_only = tmp_path / "orthanc.yaml"  # the shipped miadmark.yaml kind: orthanc_* destinations only
    plugin_only.write_text("destinations:\n  research: {orthanc_modality: research}\n"
                           "rules:\n  - {send_to: [research], action: pass}\n")
    assert main(["gateway", "--config", str(plugin_only)]) == 2
    assert "kind orthanc_modality: the gateway sends only to dimse, stow destinations" in capsys.readouterr().err


def test_log_file_json_lines_from_both_gateway_processes(tmp_path, site_keys):
    """--log-file + --log-json: the receiving process and the forwarding child write JSON lines to one
    file; a file past --log-max-bytes is rotated."""
    import signal
    import time

    from waiting import free_port

    from dicom_node.storescu import send_files
    gw_port = free_port()
    cfg = site_yaml(tmp_path, site_keys, gw_port=gw_port, rx_port=free_port(), gw_metrics=free_port(), rx_metrics=0)
    log_file = tmp_path / "logs" / "gateway.log"
    proc = subprocess.Popen([sys.executable, "-m", "miadmark.cli", "--log-file", str(log_file), "--log-json",
                             "--log-max-bytes", "1000", "gateway", "--config", str(cfg)], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log_file.exists() and "listening" in log_file.read_text()):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        send_files("127.0.0.1", gw_port, CT[:2], called_ae="ARCHIVE", calling_ae="PACS")  # research is down
        while time.monotonic() < deadline and not (log_file.parent / "gateway.log.1").exists():
            time.sleep(0.2)  # the forwarding child logs each retry: the file grows past 1000 bytes
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    records = [json.loads(line) for p in sorted(log_file.parent.glob("gateway.log*"))
               for line in p.read_text().splitlines()]
    assert {"time", "level", "logger", "process", "message"} <= set(records[0])
    assert len({r["process"] for r in records}) == 2  # the gateway and its forwarding child
    assert any("unreachable" in r["message"] for r in records)
    assert (log_file.parent / "gateway.log.1").exists()  # rotated past 1000 bytes
    assert proc.stderr.read() == ""  # nothing on stderr when a log file is given


def test_demo_series_takes_extension_less_dicom_files(tmp_path, monkeypatch):
    """What protect accepts, demo --series accepts: DICOM files without .dcm (checked up to sending)."""
    series = tmp_path / "series"
    series.mkdir()
    for i, src in enumerate(CT[:2]):
        (series / f"IM{i:04d}").write_bytes(src.read_bytes())
    (series / "README").write_text("not DICOM")
    from dicom_node.commands import demo
    assert [p.name for p in demo.series_files(series, 8)] == ["IM0000", "IM0001"]
