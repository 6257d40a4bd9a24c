"""pynetdicom services around the core: the protecting gateway and the key-holding receiving node.

    gateway.Gateway          C-STORE SCP -> rules -> durable spool + SQLite queue (answers after both)
    forwarding.Forwarding    hosts one forwarder per destination; `miadmark gateway` runs it in a
                             child process (its own GIL), tests may run it in threads
    forwarder.Forwarder      protect (batched, once) and deliver over the destination's transport
                             (transports: DICOM association or STOW-RS); backoff with jitter, dead letter
    receiver.Receiver        C-STORE SCP applying the core receive policy (miadmark.receive_policy)
    decode_probe             compressed pixel data decoded first in a worker process (a crash stays there)
    spool, protection, lesions, reload, tls, studylog, storescu: one job each
    commands                 the `miadmark gateway | receive | queue` subcommands
The network plumbing, the durable queue and the metrics are dicomnet's (shared with the Orthanc plugin).
"""
