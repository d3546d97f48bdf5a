"""The HTTP API, black-box: a real ``flow8 serve --db`` subprocess, httpx as the client."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import REPO
from tests.flow8_cli import run

from .conftest import HELLO, SLOW, Api, new_id
from .server import clean_env, make_key

JSON = {"content-type": "application/json"}


def put_flow(client: httpx.Client, name: str, document: dict[str, object] = HELLO) -> int:
    response = client.put(f"/v1/flows/{name}", json=document)
    assert response.status_code in (200, 201), response.text
    return int(response.json()["version"])


def start(client: httpx.Client, flow: str, input: object = None, **more: object) -> httpx.Response:
    return client.post("/v1/plays", json={"flow": flow, "input": input or {"n": 1}, **more})


def finished(client: httpx.Client, play_id: str) -> dict[str, object]:
    response = client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 30})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


# ---------------------------------------------------------------- flows


def test_flows_put_get_versions_and_validate(api: Api) -> None:
    name = new_id("flow")
    with api.server.client(api.acme) as client:
        created = client.put(f"/v1/flows/{name}", json=HELLO)
        assert (created.status_code, created.json()) == (201, {"name": name, "version": 1})
        assert put_flow(client, name, {**HELLO, "description": "two"}) == 2
        assert client.put(f"/v1/flows/{name}", json={**HELLO, "version": 2, "description": "two"}).status_code == 200
        clash = client.put(f"/v1/flows/{name}", json={**HELLO, "version": 1, "description": "other"})
        assert clash.status_code == 409 and clash.json()["detail"][0]["loc"] == ["body", "version"]

        assert client.get(f"/v1/flows/{name}").json()["version"] == 2
        first = client.get(f"/v1/flows/{name}", params={"version": 1}).json()
        assert (first["version"], [f["name"] for f in first["flowlets"]]) == (1, ["a", "b"])
        assert client.get(f"/v1/flows/{name}/versions").json() == {"name": name, "versions": [1, 2]}
        assert client.get(f"/v1/flows/{name}", params={"version": 9}).status_code == 404
        assert client.get(f"/v1/flows/{new_id('none')}/versions").status_code == 404

        ok = client.post("/v1/flows/validate", json={"name": "x", **HELLO}).json()
        assert ok["valid"] is True
        cycle = {"name": "x", "flowlets": [{"name": "a", "module_ref": "echo", "depends_on": ["a"]}]}
        bad = client.post("/v1/flows/validate", json=cycle).json()
        assert bad["valid"] is False and bad["errors"]
        unknown = {"name": "x", "flowlets": [{"name": "a", "module_ref": "no-such-module"}]}
        assert "no-such-module" in " ".join(client.post("/v1/flows/validate", json=unknown).json()["errors"])
        refused = client.put(f"/v1/flows/{new_id('flow')}", json={"flowlets": unknown["flowlets"]})
        assert refused.status_code == 422 and "no-such-module" in refused.text
        renamed = client.put(f"/v1/flows/{name}", json={**HELLO, "name": "another"})
        assert renamed.status_code == 422 and renamed.json()["detail"][0]["loc"] == ["body", "name"]


# ---------------------------------------------------------------- plays


def test_a_play_started_over_http_runs_and_reads_back_as_flow8_shows_it(api: Api) -> None:
    name = new_id("flow")
    with api.server.client(api.acme) as client:
        put_flow(client, name)
        accepted = start(client, name, {"n": 7})
        assert accepted.status_code == 202, accepted.text
        play_id = accepted.json()["play_id"]
        assert accepted.headers["location"] == f"/v1/plays/{play_id}"
        assert client.get(accepted.headers["location"]).status_code == 200  # recorded before the 202
        assert accepted.json() == {
            "play_id": play_id, "company_id": "acme", "flow": name, "flow_version": 1, "status": "running",
        }  # fmt: skip

        done = finished(client, play_id)
        assert done["status"] == "succeeded" and done["input"] == {"n": 7}
        got = client.get(accepted.headers["location"]).json()
        assert got == done
        # the same JSON as the CLI's (flow8 run --json and flow8 plays show print state.public())
        shown = run("plays", "show", play_id, "--db", api.db, cwd=api.cwd, env=clean_env())
        assert shown.code == 0, shown.err
        assert shown.json() == got

        events = client.get(f"/v1/plays/{play_id}/events").json()
        types = [e["type"] for e in events["items"]]
        assert types[0] == "PlayStarted" and types[-1] == "PlayCompleted"
        assert [e["seq"] for e in events["items"]] == list(range(1, len(types) + 1))
        tail = client.get(f"/v1/plays/{play_id}/events", params={"after_seq": 2}).json()["items"]
        assert [e["seq"] for e in tail] == list(range(3, len(types) + 1))

        verdict = client.get(f"/v1/plays/{play_id}/audit").json()
        assert (verdict["play_id"], verdict["verdict"], verdict["events"]) == (play_id, "ok", len(types))
        cli = run("audit", "verify", "--db", api.db, "--company", "acme", "--play", play_id, "--json", cwd=api.cwd,
                  env=clean_env())  # fmt: skip
        assert cli.json_lines()[0] == verdict


def test_starting_with_the_same_play_id_is_the_same_play(api: Api) -> None:
    name, play_id = new_id("flow"), new_id()
    with api.server.client(api.acme) as client:
        put_flow(client, name)
        first = start(client, name, play_id=play_id)
        again = start(client, name, play_id=play_id)
        assert first.status_code == 202 and again.status_code in (200, 202)
        assert first.json()["play_id"] == again.json()["play_id"] == play_id
        done = finished(client, play_id)
        after = start(client, name, {"other": "input"}, play_id=play_id)
        assert after.status_code == 200 and after.json() == done  # the play, not a second one
        assert after.headers["location"] == f"/v1/plays/{play_id}"
        listed = client.get("/v1/plays", params={"flow": name}).json()["items"]
        assert [p["play_id"] for p in listed] == [play_id]
        events = client.get(f"/v1/plays/{play_id}/events").json()["items"]
        assert [e["type"] for e in events].count("PlayStarted") == 1


def test_plays_are_listed_by_page_and_filter(api: Api) -> None:
    name = new_id("flow")
    since = datetime.now(UTC)
    with api.server.client(api.acme) as client:
        put_flow(client, name)
        ids = [start(client, name).json()["play_id"] for _ in range(5)]
        for play_id in ids:
            finished(client, play_id)
        seen: list[str] = []
        params: dict[str, object] = {"flow": name, "limit": 2}
        while True:
            page = client.get("/v1/plays", params=params).json()
            seen += [p["play_id"] for p in page["items"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert sorted(seen) == sorted(ids) and len(seen) == 5
        newest_first = [p["started_at"] for p in client.get("/v1/plays", params={"flow": name}).json()["items"]]
        assert newest_first == sorted(newest_first, reverse=True)

        assert len(client.get("/v1/plays", params={"flow": name, "status": "succeeded"}).json()["items"]) == 5
        assert client.get("/v1/plays", params={"flow": name, "status": "failed"}).json()["items"] == []
        window = {"flow": name, "since": since.isoformat(), "until": (since + timedelta(hours=1)).isoformat()}
        assert len(client.get("/v1/plays", params=window).json()["items"]) == 5
        later = {"flow": name, "since": (since + timedelta(hours=1)).isoformat()}
        assert client.get("/v1/plays", params=later).json() == {"items": [], "next_cursor": None}

        for bad, field in (({"cursor": "not-a-cursor"}, "cursor"), ({"status": "done"}, "status"),
                           ({"limit": 0}, "limit"), ({"since": "yesterday"}, "since")):  # fmt: skip
            refused = client.get("/v1/plays", params=bad)
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == ["query", field]


def test_a_wait_times_out_with_408_and_a_cancel_ends_the_play(api: Api) -> None:
    name = new_id("slow")
    with api.server.client(api.acme) as client:
        put_flow(client, name, SLOW)
        play_id = start(client, name).json()["play_id"]
        waited = client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 0.2})
        assert waited.status_code == 408 and waited.json()["play"]["status"] == "running"
        too_long = client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 100_000})
        assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["query", "timeout"]

        cancelled = client.post(f"/v1/plays/{play_id}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        assert finished(client, play_id)["status"] == "cancelled"
        again = client.post(f"/v1/plays/{play_id}/cancel")
        assert again.status_code == 409 and "cancelled" in again.json()["detail"]


# ---------------------------------------------------------------- kv


def test_kv_is_read_written_and_compared(api: Api) -> None:
    key = f"counters/{new_id('k')}"
    with api.server.client(api.acme) as client:
        assert client.get(f"/v1/kv/{key}").status_code == 404
        one = client.put(f"/v1/kv/{key}", json={"value": {"n": 1}}).json()
        assert one == {"key": key, "value": {"n": 1}, "version": 1}
        assert client.get(f"/v1/kv/{key}").json() == one
        stale = client.put(f"/v1/kv/{key}", params={"expected_version": 0}, json={"value": 2})
        assert stale.status_code == 409
        two = client.put(f"/v1/kv/{key}", params={"expected_version": 1}, json={"value": 2}).json()
        assert two == {"key": key, "value": 2, "version": 2}
        assert client.put(f"/v1/kv/{key}", json={"nope": 1}).status_code == 422


# ---------------------------------------------------------------- the tenant boundary


def test_a_company_never_sees_or_touches_another_companys_resources(api: Api) -> None:
    name, kv_key = new_id("flow"), new_id("k")
    with api.server.client(api.acme) as acme, api.server.client(api.globex) as globex:
        put_flow(acme, name)
        play_id = start(acme, name, play_id=new_id()).json()["play_id"]
        finished(acme, play_id)
        acme.put(f"/v1/kv/{kv_key}", json={"value": "acme's"})

        for path in (f"/v1/plays/{play_id}", f"/v1/plays/{play_id}/events", f"/v1/plays/{play_id}/audit",
                     f"/v1/plays/{play_id}/wait?timeout=1", f"/v1/flows/{name}", f"/v1/flows/{name}/versions",
                     f"/v1/kv/{kv_key}"):  # fmt: skip
            response = globex.get(path)
            assert response.status_code == 404, (path, response.text)
            assert "acme" not in response.text, path
        assert globex.post(f"/v1/plays/{play_id}/cancel").status_code == 404
        assert play_id not in globex.get("/v1/plays", params={"limit": 500}).text
        # acme's flow is not globex's to start; acme's play id is not globex's to take
        assert start(globex, name).status_code == 422
        put_flow(globex, name)
        taken = start(globex, name, play_id=play_id)
        assert taken.status_code == 409 and "acme" not in taken.text
        # a flow of the same name is globex's own; acme's is untouched
        assert globex.get(f"/v1/flows/{name}/versions").json()["versions"] == [1]
        globex.put(f"/v1/kv/{kv_key}", json={"value": "globex's"})
        assert acme.get(f"/v1/kv/{kv_key}").json()["value"] == "acme's"
        assert acme.get(f"/v1/plays/{play_id}").json()["status"] == "succeeded"


def test_keys_are_an_admins_and_another_companys_key_is_a_404(api: Api) -> None:
    spare = make_key("--db", api.db, company="acme", cwd=api.cwd, env=clean_env())
    other = make_key("--db", api.db, company="globex", cwd=api.cwd, env=clean_env())
    spare_id, other_id = spare.split("_")[1], other.split("_")[1]
    with api.server.client(api.acme_admin) as admin, api.server.client(api.acme) as member:
        listed = admin.get("/v1/keys").json()["items"]
        assert spare_id in {k["key_id"] for k in listed} and {k["company_id"] for k in listed} == {"acme"}
        assert all("digest" not in k for k in listed)
        assert member.get("/v1/keys").status_code == 403
        assert admin.post(f"/v1/keys/{other_id}/revoke").status_code == 404
        with api.server.client(other) as globex:
            assert globex.get("/v1/plays").status_code == 200
        revoked = admin.post(f"/v1/keys/{spare_id}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    with api.server.client(spare) as client:
        assert client.get("/v1/plays").status_code == 401


# ---------------------------------------------------------------- refusals


def test_requests_without_a_valid_key_are_401(api: Api) -> None:
    revoked = make_key("--db", api.db, company="acme", cwd=api.cwd, env=clean_env())
    gone = run("keys", "revoke", revoked.split("_")[1], "--db", api.db, cwd=api.cwd, env=clean_env())
    assert gone.code == 0, gone.err
    wrong_secret = api.acme[:-4] + ("AAAA" if not api.acme.endswith("AAAA") else "BBBB")
    unknown = "f8k_" + "0" * 16 + "_" + api.acme.split("_", 2)[2]
    headers = [{}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer nope"},
               {"Authorization": f"Bearer {wrong_secret}"}, {"Authorization": f"Bearer {unknown}"},
               {"Authorization": f"Bearer {revoked}"}, {"Authorization": "Bearer " + "x" * 10_000}]  # fmt: skip
    with api.server.client() as client:
        for header in headers:
            response = client.get("/v1/plays", headers=header)
            assert response.status_code == 401, (header, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/plays", json={"flow": "x"}).status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert client.get(open_path).status_code == 200, open_path


def test_fields_of_the_wrong_shape_are_422_naming_the_field(api: Api) -> None:
    with api.server.client(api.acme) as client:
        cases = [
            (client.get("/v1/plays/bad%20id"), ["path", "play_id"]),
            (client.post("/v1/plays", json={"input": {}}), ["body", "flow"]),
            (client.post("/v1/plays", json={"flow": "no such"}), ["body", "flow"]),
            (client.post("/v1/plays", json={"flow": new_id("none")}), ["body", "flow"]),
            (client.post("/v1/plays", json={"flow": "f", "play_id": "flow8-mine"}), ["body", "play_id"]),
            (client.post("/v1/plays", json={"flow": "f", "flow_version": 0}), ["body", "flow_version"]),
            (client.post("/v1/plays", json={"flow": "f", "surprise": 1}), ["body", "surprise"]),
            (client.post("/v1/plays", content=b"[" * 100 + b"]" * 100, headers=JSON), ["body"]),
            (client.post("/v1/plays", content=b"{not json", headers=JSON), ["body"]),
        ]
        for response, loc in cases:
            assert response.status_code == 422, (loc, response.text)
            assert response.json()["detail"][0]["loc"][: len(loc)] == loc, response.text


def test_bodies_over_the_limits_are_413_before_they_are_read(api: Api) -> None:
    big = b'{"flow": "f", "input": "' + b"x" * (1024 * 1024) + b'"}'
    with api.server.client(api.acme) as client:
        sized = client.post("/v1/plays", content=big, headers={"content-type": "application/json"})
        assert sized.status_code == 413 and sized.json()["detail"][0]["loc"] == ["body"]

        def chunks() -> object:  # no Content-Length: refused as it streams in
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        streamed = client.post("/v1/plays", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413

        name = new_id("flow")
        put_flow(client, name)
        over_input = start(client, name, {"blob": "x" * (300 * 1024)})  # under the body cap, over max_input_bytes
        assert over_input.status_code == 413 and "max_input_bytes" in over_input.text


# ---------------------------------------------------------------- gzip, docs, metrics, logs


def test_responses_are_gzipped_when_the_client_asks_and_only_then(api: Api) -> None:
    name = new_id("flow")
    with api.server.client(api.acme) as client:
        put_flow(client, name)
        for play_id in [start(client, name).json()["play_id"] for _ in range(3)]:
            finished(client, play_id)
    with api.server.client(api.acme, headers={"Accept-Encoding": "gzip"}) as raw:
        with raw.stream("GET", "/v1/plays", params={"flow": name}) as zipped:
            assert zipped.headers["content-encoding"] == "gzip"
            body = gzip.decompress(b"".join(zipped.iter_raw()))
        assert len(json.loads(body)["items"]) == 3
    with api.server.client(api.acme, headers={"Accept-Encoding": "identity"}) as plain:
        response = plain.get("/v1/plays", params={"flow": name})
        assert "content-encoding" not in response.headers
        assert len(response.json()["items"]) == 3
    with api.server.client(headers={"Accept-Encoding": "gzip"}) as small:
        assert "content-encoding" not in small.get("/healthz").headers  # under compression_min_bytes


def test_docs_and_openapi_load_with_no_outside_asset(api: Api) -> None:
    with api.server.client() as client:
        spec = client.get("/openapi.json").json()
        for path in ("/v1/plays", "/v1/plays/{play_id}", "/v1/plays/{play_id}/events", "/v1/plays/{play_id}/cancel",
                     "/v1/plays/{play_id}/wait", "/v1/plays/{play_id}/audit", "/v1/flows/{name}",
                     "/v1/flows/{name}/versions", "/v1/flows/validate", "/v1/kv/{key}"):  # fmt: skip
            assert path in spec["paths"], path
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert "StartRequest" in spec["components"]["schemas"]
        # the flow routes' bodies are the flow definition of schemas/flow-definition.schema.json
        flow_body = spec["paths"]["/v1/flows/{name}"]["put"]["requestBody"]["content"]["application/json"]["schema"]
        assert flow_body["$ref"] == "#/components/schemas/FlowDefinition"
        published = json.loads((REPO / "schemas" / "flow-definition.schema.json").read_text())
        assert spec["components"]["schemas"]["FlowDefinition"]["properties"].keys() == published["properties"].keys()
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        assert assets and all(a.startswith("/") for a in assets), assets  # served here, no CDN
        for asset in assets:
            assert client.get(asset).status_code == 200, asset


def test_refusals_are_counted_and_no_key_reaches_the_log(api: Api) -> None:
    with api.server.client() as client:
        client.get("/v1/plays", headers={"Authorization": f"Bearer {api.acme[:-1]}X"})
        with api.server.client(api.acme) as keyed:
            keyed.get(f"/v1/plays/{new_id()}")
        page = client.get("/metrics").text
    counted = {m[0]: float(m[1]) for m in re.findall(r'flow8_http_refused_total\{status="(\d+)"\} (\S+)', page)}
    assert counted.get("401", 0) >= 1 and counted.get("404", 0) >= 1, counted
    log = api.server.output()
    assert '"GET /v1/plays HTTP/1.1" 401' in log  # uvicorn's access log is on...
    assert "f8k_" not in log and api.acme.split("_", 2)[2] not in log  # ...and holds no key
    assert "Authorization" not in log and "Bearer" not in log
