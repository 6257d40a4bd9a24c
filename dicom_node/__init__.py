"""pynetdicom services around the core: the protecting gateway and the key-holding receiving node.

    gateway.Gateway      C-STORE SCP -> durable spool + SQLite queue -> Forwarder threads
    forwarder.Forwarder  one per destination: protect (batched) and send (C-STORE or STOW-RS)
    receiver.Receiver    C-STORE SCP that strips with its keys and stores clean originals
"""
