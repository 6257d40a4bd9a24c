"""pynetdicom services around the core: the protecting gateway and the key-holding receiving node.

    gateway.Gateway          C-STORE SCP -> rules -> durable spool + SQLite queue (answers after both)
    forwarding.Forwarding    hosts one forwarder per destination; `miadmark gateway` runs it in a
                             child process (its own GIL), tests may run it in threads
    forwarder.Forwarder      protect (batched, once) and deliver: C-STORE (one association per batch,
                             kept open while more arrives) or STOW-RS; backoff with jitter, dead letter
    receiver.Receiver        C-STORE SCP that strips with its keys and stores clean originals
    workqueue, spool, quarantine, audit, reload, transport, storescu: one job each
"""
