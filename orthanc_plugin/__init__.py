"""MIAD-MARK inside Orthanc: exports go through the routing rules, ingestion strips.

Orthanc loads orthanc_plugin/plugin.py (the "PythonScript"), which calls service.install():
  service   the plugin's state and Orthanc events     settings  miadmark.yaml, reloaded on change
  exports   the plan: a rules decision per instance   outbox    the durable queue (SQLite) and its jobs
  delivery  the thread that protects and sends        targets   how each Orthanc target is reached
  routes    REST routes                               filters   the HTTP filter (raw routes, downloads)
  ingest    strip on arrival (receiving site)         jobs      worker threads, Orthanc-shaped job views
bodies, outbox, jobs, receiver, senders, stow and testing import without Orthanc (unit tests); the
others import Orthanc's `orthanc` module.
"""
