"""Cohort release: protect a whole cohort from a DICOMweb archive on Ray, resumably.

One module per job:
    job.py        what a release is (source, destination, keys, rules): the settings every worker gets
    client.py     a DICOMweb client (dicomweb-client; no gzip of pixel data)
    patience.py   waiting out a source or destination that went away (backoff with jitter)
    listing.py    the cohort, listed by QIDO-RS
    fetching.py   instances, fetched by WADO-RS in the archive's own transfer syntax
    sink.py       where protected instances go: STOW-RS or a folder (file://DIR)
    protector.py  the Ray actor: engine and keys loaded once, fetch -> rules -> protect -> hold -> send
    manifest.py   SQLite (WAL) record of every instance: what was prepared, sent, skipped, failed
    driver.py     lists, dispatches batches to the actors, records, reports progress and a summary

This package is an adapter: it moves datasets over the network and calls the core
(miadmark.protect, miadmark.rules); it decides nothing about pixels or keys itself.
Needs the `release` extra: pip install -e '.[release]' (ray, dicomweb-client).
"""
