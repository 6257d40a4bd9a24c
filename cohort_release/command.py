"""`miadmark release --source URL --dest URL ...`: protect a cohort from a DICOMweb archive on Ray.

The work is in the cohort_release package (needs the `release` extra: ray, dicomweb-client);
this module only reads the command line.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from miadmark.engine import DEFAULT_PROFILE, PROFILE_NAMES, STRENGTH_HELP, STRENGTHS, profile_spec
from miadmark.errors import MiadmarkError


def register(sub) -> None:
    p = sub.add_parser("release", help="protect a cohort from a DICOMweb archive into a destination, on Ray")
    p.add_argument("--source", required=True, metavar="URL", help="DICOMweb base URL of the archive "
                   "(QIDO-RS / WADO-RS), e.g. http://pacs:8042/dicom-web")
    p.add_argument("--dest", required=True, metavar="URL|NAME",
                   help="DICOMweb base URL (STOW-RS), file://DIR, or a stow_url destination of --config")
    p.add_argument("--dest-name", help="the destination's name for the rules (default: the --config name "
                   "--dest gives, else the URL)")
    p.add_argument("--recipient", action="append", default=[], metavar="CERT",
                   help="certificate of a site allowed to strip (repeat; not with --config: rules name them)")
    p.add_argument("--sign-key", help="this site's private key (PEM; default: identity of --config)")
    p.add_argument("--sign-cert", help="this site's certificate (PEM; default: identity of --config)")
    p.add_argument("--passphrase-file", help="passphrase of --sign-key")
    p.add_argument("--config", help="the gateway's rules file: block / pass / protect per study for --dest")
    p.add_argument("--query", action="append", default=[], metavar="KEY=VALUE",
                   help="QIDO-RS study filter, e.g. StudyDate=20240101-20241231 (repeat)")
    p.add_argument("--studies", metavar="FILE", help="Study Instance UIDs to release, one per line")
    p.add_argument("--profile", choices=PROFILE_NAMES,
                   help=f"watermark profile (default {DEFAULT_PROFILE}; a rule's profile wins)")
    p.add_argument("--strength", choices=STRENGTHS, help=STRENGTH_HELP + "; a rule's strength wins")
    p.add_argument("--address", help="Ray cluster: auto or ray://HOST:10001 (default: a local Ray)")
    p.add_argument("--workers", type=int, default=1, help="protecting actors (default 1)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per actor (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="e.g. 0.5: two actors share a GPU")
    p.add_argument("--batch-size", type=int, default=8, help="instances per batch (one series run)")
    p.add_argument("--state", default="release-state", metavar="DIR",
                   help="manifest folder; rerun with the same one to resume (default release-state)")
    p.add_argument("--max-rate", type=float, metavar="N", help="fetch at most N instances/s from the source")
    p.add_argument("--patience", type=float, default=600.0, metavar="S",
                   help="how long the source or destination may be away (backoff) before the run stops")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the engine runs: auto (CUDA when Ray gives the actor a GPU), cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from cohort_release.driver import RunOptions, print_summary, release
        from cohort_release.listing import parse_query, read_study_list
    except ImportError as exc:
        print(f"miadmark release: needs the release extra (pip install -e '.[release]'): {exc}", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        job = _job(args)
        opts = RunOptions(state=args.state, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size, address=args.address,
                          filters=parse_query(args.query),
                          studies=read_study_list(args.studies) if args.studies else None,
                          max_rate=args.max_rate, progress=not args.no_progress)
        if args.workers < 1 or args.batch_size < 1:
            raise ValueError("--workers and --batch-size must be at least 1")
        summary = release(job, opts)
    except (MiadmarkError, ValueError, OSError) as exc:
        print(f"miadmark release: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return summary.exit_code


def _job(args):
    from cohort_release.job import ReleaseJob

    from miadmark.config import load_config

    if args.profile is not None and args.profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {args.profile!r} (known: {', '.join(PROFILE_NAMES)})")
    dest, dest_name, headers, verify, retry = args.dest, args.dest_name, {}, True, {}
    sign_key, sign_cert = args.sign_key, args.sign_cert
    audit = Path(args.state).resolve() / "audit.jsonl"  # beside the manifest, unless the config names a trail
    metrics = None
    if args.config:
        cfg = load_config(args.config)
        if {"audit", "spool"} & cfg.gateway.model_fields_set:  # the gateway's trail: one trail per site
            audit = Path(cfg.gateway.audit).resolve()
        if "spool" in cfg.gateway.model_fields_set and cfg.gateway.metrics_port is not None:
            metrics = str(Path(cfg.gateway.metrics_dir).resolve())  # the site's /metrics counts the release
        if args.recipient:
            raise ValueError("--recipient is not used with --config: the matching rule names the recipients")
        if args.dest in cfg.destinations:
            named = cfg.destinations[args.dest]
            from cohort_release.sink import RELEASE_KINDS
            if named.kind not in RELEASE_KINDS:
                raise ValueError(f"destination {args.dest!r} of {args.config} is a {named.kind} destination: a "
                                 f"release sends to {', '.join(RELEASE_KINDS)} (stow_url) destinations")
            dest, dest_name = str(named.stow_url).rstrip("/").removesuffix("/studies"), dest_name or args.dest
            headers, verify = dict(named.headers), named.verify
        if dest_name not in cfg.destinations:
            raise ValueError(f"--dest-name {dest_name!r} is not a destination of {args.config} "
                             f"(known: {', '.join(cfg.destinations) or 'none'}): the rules could not match it")
        retry = cfg.gateway.retry.model_dump()  # the same `retry:` block as the gateway's
        if cfg.identity is not None:
            sign_key = sign_key or str(cfg.identity.key)
            sign_cert = sign_cert or str(cfg.identity.cert)
    elif not args.recipient:
        raise ValueError("--recipient is required (or --config with rules that name recipients)")
    if not sign_key or not sign_cert:
        raise ValueError("--sign-key and --sign-cert are required (or an identity in --config)")
    return ReleaseJob(source=args.source, dest=dest, dest_name=dest_name or dest, sign_key=sign_key,
                      sign_cert=sign_cert, recipients=tuple(args.recipient), passphrase_file=args.passphrase_file,
                      profile=profile_spec(args.profile, args.strength), config=args.config, device=args.device,
                      dest_headers=headers, dest_verify=verify, patience_s=args.patience, retry=retry,
                      audit=str(audit), metrics=metrics, metrics_host=socket.gethostname() if metrics else None)
