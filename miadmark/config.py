"""The one configuration file (YAML) shared by the dicom_node services and the Orthanc plugin.

API (stable; the Orthanc plugin imports it):

    from miadmark.config import load_config, parse_config, Config, ConfigError
    cfg = load_config("site.yaml")        # -> Config; raises ConfigError("site.yaml:14: reason")
    cfg.path                              # the file it came from (None for parse_config without path)
    cfg.identity.key / .cert              # absolute Paths (relative ones resolved against the file's folder)
    cfg.gateway                           # GatewayConfig (defaults when the section is absent)
    cfg.destinations["research"].kind     # "dimse" | "stow" | "orthanc_modality" | "orthanc_peer" | "orthanc_dicomweb"
    cfg.rules[i].when / .send_to / .action / .recipients / .profile / .strength / .line
    cfg.receiver                          # ReceiverConfig or None
    cfg.orthanc                           # free-form dict for plugin-only settings

ConfigError has `.line` (1-based, or None) and `.reason`; str() is "FILE:LINE: reason".
Rule matching lives in miadmark.rules.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      ValidationInfo, field_validator, model_validator)
from pydicom.datadict import tag_for_keyword

# Keys of `when` that are not DICOM keywords.
SPECIAL_KEYS = ("called_ae", "calling_ae", "destination")


class ConfigError(ValueError):
    """A configuration file that cannot be used. str() = 'FILE:LINE: reason'."""

    def __init__(self, reason: str, *, path: str | os.PathLike | None = None, line: int | None = None):
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.line = line
        where = self.path or "<config>"
        super().__init__(f"{where}:{line}: {reason}" if line else f"{where}: {reason}")


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    value = Path(os.path.expanduser(str(value)))
    base = (info.context or {}).get("base")
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve)]
AE_CHARS = r"[\x20-\x5b\x5d-\x7e]"  # printable ASCII without backslash
AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=rf"^{AE_CHARS}*[^ ]{AE_CHARS}*$")]
Port = Annotated[int, Field(ge=1, le=65535)]
ListenPort = Annotated[int, Field(ge=0, le=65535)]  # 0 = any free port (tests)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyPair(_Model):
    key: ConfigPath
    cert: ConfigPath
    passphrase_file: ConfigPath | None = None


class TlsConfig(_Model):
    """DICOM TLS (PS3.15 B.1 / B.9): our certificate and key; `ca` verifies the peer's certificate.
    On a listener, require_client_cert makes it mutual (callers must present a certificate signed by ca)."""

    cert: ConfigPath | None = None  # PEM; required on a listener, optional for a client (mutual TLS)
    key: ConfigPath | None = None
    ca: ConfigPath | None = None  # None: the system's CA store (client side); no client check (listener)
    require_client_cert: bool = False
    server_hostname: str | None = None  # client side: the name to check in the server's certificate

    @model_validator(mode="after")
    def _mutual(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls needs both cert and key, or neither")
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the CA that signs the callers' certificates)")
        return self

    def files(self) -> list[tuple[str, Path]]:
        return [(name, p) for name in ("cert", "key", "ca") if (p := getattr(self, name)) is not None]


class RetryConfig(_Model):
    max_attempts: int = Field(20, ge=1)  # then the item goes to the dead-letter state
    base_s: float = Field(2.0, gt=0)  # first wait; doubles each attempt, with +-50 % jitter
    max_s: float = Field(600.0, gt=0)  # cap on one wait


class GatewayConfig(_Model):
    ae_title: AETitle = "MIADMARK"
    bind: str = "0.0.0.0"
    port: ListenPort = 11112
    allow_calling: list[AETitle] | None = None  # None = any calling AE
    spool: ConfigPath = Path("spool")
    quarantine: ConfigPath | None = None  # default <spool>/quarantine
    audit: ConfigPath | None = None  # default <spool>/audit.jsonl (JSON lines, one per instance)
    device: str = "auto"  # protect on "auto" | "cpu" | "cuda"
    batch_size: int = Field(128, ge=1)  # at most this many instances per outgoing association
    # a protect-route image waits until its study has received nothing for this long, so that a SEG /
    # RTSTRUCT sent after its images still keeps the watermark off their lesions (0: no wait)
    study_settle_s: float = Field(0.0, ge=0, le=3600)
    retry: RetryConfig = RetryConfig()
    reload_interval_s: float = Field(2.0, gt=0)  # how often the config file is checked for changes
    max_pdu: int = Field(0, ge=0)  # 0 = dicomnet.listener.DEFAULT_MAX_PDU (4 MiB); reads are bounded by it
    max_associations: int = Field(32, ge=1, le=512)  # concurrent connections; more are closed at accept
    tls: TlsConfig | None = None  # DICOM TLS on the listener
    metrics_port: ListenPort | None = None  # GET /metrics, /health, / (status page); None = off
    metrics_bind: str = "127.0.0.1"  # loopback unless told otherwise

    @property
    def metrics_dir(self) -> Path:
        """The site's shared metrics files (the gateway's processes and a release with this configuration
        count there; the gateway's /metrics sums them)."""
        return self.spool / "metrics"

    @model_validator(mode="after")
    def _defaults(self):
        if self.quarantine is None:
            object.__setattr__(self, "quarantine", self.spool / "quarantine")
        if self.audit is None:
            object.__setattr__(self, "audit", self.spool / "audit.jsonl")
        return self


class _Destination(_Model):
    kind: ClassVar[str]
    associations: int = Field(2, ge=1, le=16)  # parallel outgoing associations / requests (dicom_node gateway)
    timeout_s: float = Field(60.0, gt=0)


class DimseDestination(_Destination):
    """A DICOM C-STORE SCP: ae_title + host + port (optionally over TLS)."""

    kind: ClassVar[str] = "dimse"
    ae_title: AETitle
    host: str
    port: Port
    calling_ae: AETitle | None = None  # our AE title on the association (default: gateway.ae_title)
    tls: TlsConfig | None = None

    @property
    def target(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class StowDestination(_Destination):
    """A DICOMweb STOW-RS endpoint (the full POST URL, e.g. https://pacs/dicom-web/studies)."""

    kind: ClassVar[str] = "stow"
    stow_url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, str] = {}
    verify: bool | ConfigPath = True  # TLS verification of the server, or a CA bundle path
    client_cert: ConfigPath | None = None  # mutual TLS: our certificate (PEM) ...
    client_key: ConfigPath | None = None  # ... and its key (PEM; may be inside client_cert)

    @property
    def target(self) -> str:
        return str(self.stow_url)


class OrthancModalityDestination(_Destination):
    kind: ClassVar[str] = "orthanc_modality"
    orthanc_modality: str

    @property
    def target(self) -> str:
        return self.orthanc_modality


class OrthancPeerDestination(_Destination):
    kind: ClassVar[str] = "orthanc_peer"
    orthanc_peer: str

    @property
    def target(self) -> str:
        return self.orthanc_peer


class OrthancDicomwebDestination(_Destination):
    kind: ClassVar[str] = "orthanc_dicomweb"
    orthanc_dicomweb: str

    @property
    def target(self) -> str:
        return self.orthanc_dicomweb


# kind -> (model, the keys that mark it in the YAML). A new kind of destination is one model here and a
# handler registered by the adapter that sends to it (dicomnet.destinations.handler_for); each adapter
# says at start-up which configured destinations it does not send to.
DESTINATION_MODELS = {
    "dimse": (DimseDestination, ("ae_title", "host", "port")),
    "stow": (StowDestination, ("stow_url",)),
    "orthanc_modality": (OrthancModalityDestination, ("orthanc_modality",)),
    "orthanc_peer": (OrthancPeerDestination, ("orthanc_peer",)),
    "orthanc_dicomweb": (OrthancDicomwebDestination, ("orthanc_dicomweb",)),
}
DESTINATION_KINDS = tuple(DESTINATION_MODELS)
KIND_HELP = "a destination needs exactly one of: " + ", ".join(
    "{" + ", ".join(keys) + "}" if len(keys) > 1 else keys[0] for _, keys in DESTINATION_MODELS.values())


def _destination_kind(value) -> str | None:
    if not isinstance(value, dict):
        return getattr(value, "kind", None) and f"kind:{value.kind}"
    kinds = [k for k, (_, keys) in DESTINATION_MODELS.items() if any(key in value for key in keys)]
    return f"kind:{kinds[0]}" if len(kinds) == 1 else None


# One pydantic model per kind, chosen by which keys are present (a discriminated union: errors name the
# fields of that kind only).
Destination = Annotated[
    Union[tuple(Annotated[model, Tag(f"kind:{kind}")] for kind, (model, _) in DESTINATION_MODELS.items())],
    Discriminator(_destination_kind, custom_error_type="destination_kind", custom_error_message=KIND_HELP),
]


Scalar = str | int | float
Pattern = Scalar | list[Scalar]


class Rule(_Model):
    when: dict[str, Pattern] = {}
    send_to: list[str] | None = None  # None = any destination (only allowed for block)
    action: Literal["protect", "pass", "block"]
    recipients: list[ConfigPath] = []
    profile: str | None = None  # watermark profile (protect only); None = the core's default
    # how strong the mark is (protect only; miadmark.engine.constraints.LEVELS); None = the default (standard)
    strength: str | None = None
    # de-identification before protection (protect only; miadmark.deid): PS3.15 Basic Profile
    deidentify: Literal["basic"] | None = None
    restore_identity: bool = False  # strip gives the identified original (True) or the de-identified object
    deidentify_dates: Literal["remove", "shift"] = "remove"
    name: str | None = None
    auto: bool = False  # Orthanc plugin: send each stable study to send_to without being asked
    line: int | None = None  # filled by the loader: where the rule starts in the file

    @field_validator("when")
    @classmethod
    def _keys(cls, when: dict[str, Pattern]) -> dict[str, Pattern]:
        for key, pattern in when.items():
            if key not in SPECIAL_KEYS and key != "modality" and tag_for_keyword(key) is None:
                raise ValueError(f"unknown match key {key!r}: use called_ae, calling_ae, destination, "
                                 "modality or a DICOM keyword (e.g. StudyDescription)")
            for p in pattern if isinstance(pattern, list) else [pattern]:
                text = str(p)
                if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
                    try:
                        re.compile(text[1:-1])
                    except re.error as exc:
                        raise ValueError(f"bad regular expression {text} for {key}: {exc}") from None
        return when

    @field_validator("profile")
    @classmethod
    def _profile(cls, profile: str | None) -> str | None:
        from .engine import PROFILE_NAMES  # names only: no torch import; `auto` is resolved by the core
        if profile is not None and profile not in PROFILE_NAMES:
            raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILE_NAMES)})")
        return profile

    @field_validator("strength")
    @classmethod
    def _strength(cls, strength: str | None) -> str | None:
        from .engine.profile import STRENGTHS  # names only: no torch import
        if strength is not None and strength not in STRENGTHS:
            raise ValueError(f"unknown strength {strength!r} (known: {', '.join(STRENGTHS)})")
        return strength

    @model_validator(mode="after")
    def _action(self):
        if self.action == "protect" and not self.recipients:
            raise ValueError("action protect needs recipients (certificate files of who may strip)")
        if self.action != "protect" and self.recipients:
            raise ValueError(f"recipients are only for action protect, not {self.action}")
        if self.action != "protect" and self.profile is not None:
            raise ValueError(f"profile is only for action protect, not {self.action}")
        if self.action != "protect" and self.strength is not None:
            raise ValueError(f"strength is only for action protect, not {self.action}")
        if self.deidentify is not None and self.action != "protect":
            raise ValueError(f"deidentify is only for action protect, not {self.action} (a pass route sends "
                             "objects unchanged)")
        if self.deidentify is None and (self.restore_identity or self.deidentify_dates != "remove"):
            raise ValueError("restore_identity and deidentify_dates need deidentify: basic")
        if self.action in ("protect", "pass") and not self.send_to:
            raise ValueError(f"action {self.action} needs send_to (a list of destination names)")
        return self


class ReceiverConfig(_Model):
    ae_title: AETitle = "MIADMARK_RX"
    bind: str = "0.0.0.0"
    port: ListenPort = 11113
    allow_calling: list[AETitle] | None = None
    store: ConfigPath | None = None  # required by `miadmark receive`; the Orthanc plugin stores in Orthanc
    quarantine: ConfigPath
    keys: list[KeyPair] = []
    trust: list[ConfigPath] | None = None  # signer certificates accepted; None = any signer (not advised)
    # instances that carry no record: None = "store" when allow_calling names the callers, else "refuse"
    # (the Orthanc plugin, whose callers Orthanc authenticates, treats None as "store")
    plain: Literal["store", "refuse"] | None = None
    audit: ConfigPath | None = None  # default <quarantine>/../receiver-audit.jsonl
    max_pdu: int = Field(0, ge=0)  # 0 = dicomnet.listener.DEFAULT_MAX_PDU (4 MiB)
    max_associations: int = Field(32, ge=1, le=512)  # concurrent connections; more are closed at accept
    tls: TlsConfig | None = None  # DICOM TLS on the listener
    metrics_port: ListenPort | None = None  # GET /metrics, /health, / (status page); None = off
    metrics_bind: str = "127.0.0.1"  # loopback unless told otherwise

    @model_validator(mode="after")
    def _defaults(self):
        if self.audit is None:
            object.__setattr__(self, "audit", self.quarantine.parent / "receiver-audit.jsonl")
        return self


class Config(_Model):
    identity: KeyPair | None = None
    gateway: GatewayConfig = GatewayConfig()
    destinations: dict[str, Destination] = {}
    rules: list[Rule] = []
    receiver: ReceiverConfig | None = None
    orthanc: dict[str, Any] = {}  # plugin-only settings, not validated here
    path: Path | None = None  # filled by the loader

    @model_validator(mode="after")
    def _cross(self):
        for i, rule in enumerate(self.rules):
            for name in rule.send_to or []:
                if name not in self.destinations:
                    raise _Located(("rules", i, "send_to"), f"unknown destination {name!r} in send_to "
                                   f"(known: {', '.join(self.destinations) or 'none'})")
        if self.identity is None and any(r.action == "protect" for r in self.rules):
            raise _Located(("rules",), "rules with action protect need an identity: {key, cert} to sign with")
        return self


class _Located(ValueError):
    def __init__(self, loc: tuple, reason: str):
        super().__init__(reason)
        self.loc = loc
        self.reason = reason


# ----------------------------------------------------------------------------------------- loading

def load_config(path: str | os.PathLike, *, check_files: bool = True) -> Config:
    """Read and validate a configuration file. check_files: every referenced key/cert must exist."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", path=path) from None
    return parse_config(text, path=path, check_files=check_files)


def parse_config(text: str, *, path: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
                 check_files: bool = True) -> Config:
    """Validate configuration text. Relative paths resolve against base (default: path's folder, else cwd)."""
    where = Path(path) if path is not None else None
    if base is None:
        base = where.resolve().parent if where is not None else Path.cwd()
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"YAML syntax: {exc.problem or exc.context}"
        raise ConfigError(reason, path=where, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML: {exc}", path=where) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the file must be a mapping (identity, gateway, destinations, rules, receiver)",
                          path=where, line=1)
    rules = data.get("rules")
    if isinstance(rules, list):
        rule_nodes = _child(node, "rules")
        for i, rule in enumerate(rules):
            if isinstance(rule, dict) and "line" not in rule:
                rule["line"] = _line(_child(rule_nodes, i)) if rule_nodes is not None else None
    data["path"] = str(where.resolve()) if where is not None else None
    try:
        cfg = Config.model_validate(data, context={"base": Path(base)})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _Located):
            loc, reason = ctx_error.loc, ctx_error.reason
        else:
            reason = _reason(err)
        raise ConfigError(f"{_dotted(loc)}: {reason}" if loc else reason, path=where,
                          line=_line(_locate(node, loc))) from None
    if check_files:
        _check_files(cfg, node, where)
    return cfg


def _check_files(cfg: Config, node, where) -> None:
    checks: list[tuple[tuple, Path]] = []
    if cfg.identity is not None:
        checks += [(("identity", "key"), cfg.identity.key), (("identity", "cert"), cfg.identity.cert)]
    for i, rule in enumerate(cfg.rules):
        checks += [(("rules", i, "recipients", j), p) for j, p in enumerate(rule.recipients)]
    if cfg.receiver is not None:
        for i, kp in enumerate(cfg.receiver.keys):
            checks += [(("receiver", "keys", i, "key"), kp.key), (("receiver", "keys", i, "cert"), kp.cert)]
        checks += [(("receiver", "trust", i), p) for i, p in enumerate(cfg.receiver.trust or [])]
    tls = [(("gateway", "tls"), cfg.gateway.tls)] + ([(("receiver", "tls"), cfg.receiver.tls)] if cfg.receiver else [])
    tls += [(("destinations", n, "tls"), getattr(d, "tls", None)) for n, d in cfg.destinations.items()]
    checks += [((*loc, name), p) for loc, t in tls if t is not None for name, p in t.files()]
    for loc, p in checks:
        if not p.is_file():
            raise ConfigError(f"{_dotted(loc)}: file not found: {p}", path=where, line=_line(_locate(node, loc)))


def _reason(err: dict) -> str:
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown setting (check the spelling)"
    return msg


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not re.match(r"^[a-z_]+$", part) and not part[:1].isupper():
            continue  # pydantic union branch names such as 'list[union[str,int,float]]'
        else:
            out += ("." if out else "") + part
    return out


def _child(node, key):
    if isinstance(node, yaml.MappingNode) and isinstance(key, str):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int):
        return node.value[key] if 0 <= key < len(node.value) else None
    return None


def _locate(node, loc: tuple):
    """The deepest YAML node along a pydantic error location (the key node for a missing/extra key)."""
    best = node
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    best, node = v, v
                    break
            else:
                continue  # a missing key or a union branch name: stay on the parent
            if isinstance(node, yaml.ScalarNode):
                best = node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                best = node = node.value[part]
            else:
                break
    return best


def _line(node) -> int | None:
    return node.start_mark.line + 1 if node is not None and getattr(node, "start_mark", None) else None
