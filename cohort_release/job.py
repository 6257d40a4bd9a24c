"""What a release is: the settings the driver and every Ray worker share (plain data, picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReleaseJob:
    source: str                      # DICOMweb base URL of the archive (e.g. http://pacs:8042/dicom-web)
    dest: str                        # DICOMweb base URL (STOW-RS to {dest}/studies) or file://DIR
    dest_name: str                   # how rules name the destination; also the stable-UID destination
    sign_key: str
    sign_cert: str
    recipients: tuple[str, ...] = ()  # certificate paths (without --config: every instance is protected for them)
    passphrase_file: str | None = None
    profile: str | None = None       # None: the core's default profile (a rule's profile wins)
    config: str | None = None        # rules file (the gateway's): block / pass / protect per destination
    device: str = "auto"
    dest_headers: dict[str, str] = field(default_factory=dict)
    dest_verify: bool | str = True
    patience_s: float = 600.0        # how long a source or destination may be away before the run stops
    timeout_s: float = 120.0         # one HTTP request
    retry: dict = field(default_factory=dict)  # the config's retry limits (dicomnet RetryPolicy); {}: defaults
    audit: str | None = None         # the audit trail (miadmark.audit): one line per instance and outcome
    metrics: str | None = None       # the site gateway's metrics folder (dicomnet.metrics): count there too
    metrics_host: str | None = None  # ... when the worker runs on this host (a Ray cluster may be elsewhere)

    def sink_options(self) -> dict:
        """open_sink's keyword arguments for the destination (cohort_release.sink)."""
        from dicomnet.outcome import RetryPolicy

        return {"headers": self.dest_headers, "verify": self.dest_verify, "timeout_s": self.timeout_s,
                "patience_s": self.patience_s, "retry": RetryPolicy.of(self.retry)}
