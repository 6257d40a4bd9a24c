"""`miadmark rules check --config FILE` and `miadmark rules test --config FILE --called-ae X FILE.dcm...`."""

from __future__ import annotations

import sys

from ..config import ConfigError, load_config
from ..errors import MiadmarkError


def register(sub) -> None:
    p = sub.add_parser("rules", help="check routing rules, or show which rule matches a file")
    rsub = p.add_subparsers(dest="rules_command", required=True)
    check = rsub.add_parser("check", help="validate the configuration file (line and reason on error)")
    check.add_argument("--config", required=True, help="the site YAML file")
    check.set_defaults(func=run_check)
    test = rsub.add_parser("test", help="which rule matches each file, and why")
    test.add_argument("--config", required=True, help="the site YAML file")
    test.add_argument("--called-ae", help="the AE title the sender calls (the gateway's route selector)")
    test.add_argument("--calling-ae", help="the sender's AE title")
    test.add_argument("--destination", help="decide for this destination only (as the Orthanc plugin does)")
    test.add_argument("files", nargs="+", metavar="FILE.dcm", help="DICOM files to route")
    test.set_defaults(func=run_test)


def run_check(args) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems = key_problems(cfg)
    for problem in problems:
        print(f"{cfg.path}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{cfg.path}: OK: {len(cfg.destinations)} destination(s), {len(cfg.rules)} rule(s)")
    for name, dest in cfg.destinations.items():
        print(f"  destination {name}: {dest.kind} {dest.target}")
    for i, rule in enumerate(cfg.rules):
        when = ", ".join(f"{k}={v}" for k, v in rule.when.items()) or "anything"
        to = ", ".join(rule.send_to) if rule.send_to else "any destination"
        extra = f" recipients={[p.name for p in rule.recipients]}" if rule.recipients else ""
        extra += f" profile={rule.profile}" if rule.profile else ""
        extra += f" strength={rule.strength}" if rule.strength else ""
        print(f"  rule {i + 1} (line {rule.line}): when {when} -> {rule.action} to {to}{extra}")
    if not cfg.rules or cfg.rules[-1].when or cfg.rules[-1].send_to:
        print("  (traffic no rule matches is blocked)")
    return 0


def key_problems(cfg) -> list[str]:
    """What makes the keys of a loaded configuration unusable: unreadable or too weak certificates, a key
    that does not match its certificate (or its passphrase), a receiver that holds no key at all."""
    from ..keys import load_certificate, load_identity, read_passphrase

    problems = []
    pairs = ([("identity", cfg.identity)] if cfg.identity is not None else [])
    if cfg.receiver is not None:
        if not cfg.receiver.keys:
            problems.append("receiver.keys: no key: the receiver could open no protected instance")
        pairs += [(f"receiver.keys[{i}]", kp) for i, kp in enumerate(cfg.receiver.keys)]
    for where, pair in pairs:
        try:
            load_identity(pair.key, pair.cert, read_passphrase(pair.passphrase_file))
        except (MiadmarkError, OSError) as exc:
            problems.append(f"{where}: {exc}")
    certs = [cert for rule in cfg.rules for cert in rule.recipients]
    if cfg.receiver is not None:
        certs += list(cfg.receiver.trust or [])
    for path in dict.fromkeys(certs):
        try:
            load_certificate(path)
        except MiadmarkError as exc:
            problems.append(str(exc))
    return problems


def run_test(args) -> int:
    from pydicom import dcmread

    from ..rules import decide, route
    try:
        cfg = load_config(args.config, check_files=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001
            print(f"{path}: unreadable ({type(exc).__name__})", file=sys.stderr)
            status = 1
            continue
        if args.destination:
            decisions = [decide(cfg, ds, destination=args.destination, called_ae=args.called_ae,
                                calling_ae=args.calling_ae)]
        else:
            decisions = route(cfg, ds, called_ae=args.called_ae, calling_ae=args.calling_ae)
        for d in decisions:
            to = ", ".join(d.destinations) or "-"
            print(f"{path}: {to}: {d.action} ({d.reason})")
    return status
