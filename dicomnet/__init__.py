"""The layer shared by the adapters (dicom_node, orthanc_plugin, cohort_release); no DICOM policy here.

    outcome   what a peer's answer means: delivered, transient failure (retry) or permanent (stop)
    dimse     C-STORE sending: one association per batch, TCP_NODELAY, statuses classified
    stow      STOW-RS sending (PS3.18): 200 all stored, 202 partial (per instance), 409 none
    listener  C-STORE SCP: reads bounded by the negotiated PDU size, bounded connections, the
              sender's explicit transfer syntax preferred, optional TLS
    queue     the durable work queue (SQLite, WAL): one row per (instance, destination), backoff,
              dead letter; the gateway's jobs and the plugin's outbox
    metrics   the metric definitions (miadmark_*) and the one hook that counts audit records
    tls       ssl contexts for DICOM TLS (PS3.15 secure transport) from the YAML settings
"""
