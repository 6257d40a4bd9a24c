"""The network layer shared by both adapters (dicom_node and orthanc_plugin); no DICOM policy here.

    outcome   what a peer's answer means: delivered, transient failure (retry) or permanent (stop)
    dimse     C-STORE sending: one association per batch, TCP_NODELAY, statuses classified
    stow      STOW-RS sending (PS3.18): 200 all stored, 202 partial (per instance), 409 none
    listener  C-STORE SCP: reads bounded by the negotiated PDU size, bounded connections, the
              sender's explicit transfer syntax preferred, optional TLS
    tls       ssl contexts for DICOM TLS (PS3.15 secure transport) from the YAML settings
"""
