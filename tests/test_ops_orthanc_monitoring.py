"""The Orthanc plugin's /miadmark/metrics and /miadmark/status-page, in a real Orthanc process."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_ops_metrics import CT

from miadmark.keys import new_identity
from orthanc_plugin.testing import OrthancProcess, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]


def test_plugin_metrics_and_status_page(tmp_path):
    keys = tmp_path / "keys"
    new_identity("hospital", keys)
    new_identity("research", keys)
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"""\
identity: {{key: {keys}/hospital.key.pem, cert: {keys}/hospital.cert.pem}}
destinations:
  partner: {{orthanc_modality: partner}}
rules:
  - send_to: [partner]
    action: protect
    recipients: [{keys}/research.cert.pem]
receiver:
  quarantine: {tmp_path}/quarantine
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
""")
    with OrthancProcess(tmp_path / "orthanc", aet="SITE", miadmark_config=cfg) as site:
        site.upload(CT[0])  # plain: stored as received, counted
        resp = site.get("/miadmark/metrics")
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(resp.text) for s in fam.samples}
        assert samples[("miadmark_plugin_config_loaded", ())] == 1
        assert samples[("miadmark_plugin_received_instances_total", (("outcome", "plain"),))] == 1
        page = site.get("/miadmark/status-page")
        assert page.status_code == 200 and 'id="loaded">loaded<' in page.text and "partner" in page.text
        assert site.post("/miadmark/metrics", {}).status_code == 405
