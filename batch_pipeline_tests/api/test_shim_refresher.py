"""The shim's background refresher under a hung call: /health says degraded with the stall's age, the
API still answers from the stored records (and /metrics with the age), and it recovers once the call
returns. A pass that reaches its deadline leaves the remaining batches to the next, which starts with
them. /health's own query to the Dagster instance has a deadline too."""

import threading
import time

from fastapi.testclient import TestClient

from batch_pipeline.api import service as service_module
from batch_pipeline.api.app import create_app
from batch_pipeline.api.instance_probe import InstanceProbe
from batch_pipeline.api.refresher import Refresher
from batch_pipeline.core.settings import Settings
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.metrics import samples
from batch_pipeline_tests.support.shim_client import create_batch, shim_client, upload_file

_PATIENCE_SECONDS = 60.0


def _eventually(condition, what: str):
    """Polls `condition` until it returns something true; a generous bound only so a failure ends."""
    give_up = time.monotonic() + _PATIENCE_SECONDS
    while not (value := condition()):
        assert time.monotonic() < give_up, f"never {what}"
        time.sleep(0.05)
    return value


def test_a_hung_storage_call_in_the_refresher_degrades_health_but_not_the_api(pipeline, instance, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    original = service_module.latest_run

    def hangs_once(*args, **kwargs):
        """The next refresh's Dagster query does not return until released; later calls answer."""
        if not entered.is_set():
            entered.set()
            release.wait(_PATIENCE_SECONDS)
        return original(*args, **kwargs)

    app = create_app(Settings(data_dir=pipeline.data_dir, shim_refresh_stall_seconds=1.0), instance,
                     refresh_interval_seconds=0.05)
    with TestClient(base_url="http://localhost", app=app) as client:
        batches = [create_batch(client, upload_file(client, [request_line(name)]).json()["id"]).json() for name in "ab"]
        monkeypatch.setattr(service_module, "latest_run", hangs_once)
        assert entered.wait(_PATIENCE_SECONDS)

        degraded = _eventually(lambda: (health := client.get("/health").json())["status"] == "degraded" and health,
                               "degraded")
        assert degraded["refresh"]["stalled"] is True and degraded["refresh"]["age_seconds"] >= 1.0
        assert "completed no pass for" in degraded["detail"] and degraded["refresh_failures"] == []
        metrics = samples(client.get("/metrics").text)
        assert metrics[("batch_pipeline_api_refresh_age_seconds", ())] >= 1.0
        # Whatever the hung pass holds, the API answers: the batch it is stuck in as last stored.
        listed = client.get("/v1/batches")
        assert listed.status_code == 200
        assert sorted(batch["id"] for batch in listed.json()["data"]) == sorted(batch["id"] for batch in batches)
        for batch in batches:
            assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "validating"

        release.set()
        recovered = _eventually(lambda: (health := client.get("/health").json())["status"] == "ok" and health,
                                "recovered")
        assert recovered["refresh"]["stalled"] is False and recovered["detail"] is None


def test_the_refresh_age_counts_from_the_last_completed_pass_and_passes_get_a_deadline():
    now = [100.0]
    deadlines: list[float] = []
    refresher = Refresher(deadlines.append, interval_seconds=1.0, stall_seconds=10.0, clock=lambda: now[0])
    assert refresher.health().model_dump() == {"age_seconds": 0.0, "stalled": False, "stall_limit_seconds": 10.0}
    now[0] = 110.5
    assert refresher.health().stalled and refresher.health().age_seconds == 10.5
    assert "no pass for 10s" in refresher.stall_detail()
    refresher.run_pass()
    assert deadlines == [115.5]  # half the stall limit
    assert not refresher.health().stalled and refresher.stall_detail() is None


def test_a_pass_past_its_deadline_leaves_the_rest_to_the_next_which_starts_with_them(pipeline, instance,
                                                                                     monkeypatch):
    with shim_client(pipeline, instance) as client:
        ids = [create_batch(client, upload_file(client, [request_line(name)]).json()["id"]).json()["id"] for name in "abc"]
        service = client.app.state.service
        refreshed: list[str] = []
        refresh = service._refresh

        def recording(batch_id, wait=True):
            refreshed.append(batch_id)
            return refresh(batch_id, wait=wait)

        monkeypatch.setattr(service, "_refresh", recording)
        for _ in range(4):  # a deadline already passed: one batch per pass, each in turn
            service.refresh_active(deadline=time.monotonic() - 1)
        assert refreshed == [*ids, ids[0]]
        refreshed.clear()
        service.refresh_active(deadline=time.monotonic() + 3600)
        assert refreshed == [ids[1], ids[2], ids[0]]


def test_health_answers_while_a_query_to_the_dagster_instance_hangs(pipeline, instance, monkeypatch):
    release, calls = threading.Event(), []
    answer = instance.get_run_records

    def hangs_until_released(*args, **kwargs):
        calls.append(threading.current_thread().name)
        release.wait(_PATIENCE_SECONDS)
        return answer(*args, **kwargs)

    with shim_client(pipeline, instance) as client:
        client.app.state.instance_probe = InstanceProbe(instance, seconds=0.1)
        monkeypatch.setattr(instance, "get_run_records", hangs_until_released)
        for _ in range(3):  # one query in flight, however often /health is asked
            health = client.get("/health").json()
            assert (health["status"], health["dagster_instance"]) == ("degraded", "unreachable")
            assert health["detail"].startswith("a query to the Dagster instance has not returned for ")
        assert calls.count("dagster-instance-probe") == 1  # the refresher's own queries are not /health's
        release.set()
        monkeypatch.undo()
        _eventually(lambda: client.get("/health").json()["status"] == "ok", "ok again")

        def fails(*args, **kwargs):
            raise ConnectionError("database is gone")

        monkeypatch.setattr(instance, "get_run_records", fails)
        health = client.get("/health").json()
        assert (health["status"], health["dagster_instance"], health["detail"]) == \
            ("degraded", "unreachable", "ConnectionError")
