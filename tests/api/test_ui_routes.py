"""The /v1 routes the web UI draws with, black-box against a real ``flow8 serve --db``: a play's
timeline and a flow's DAG as SVG, the company's flows, its KV keys by prefix; each scoped to
the key's company (another's is a 404 or absent), 401 without a key, 422 naming a bad field."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import httpx

from flow8_streams.http.ui import ASSETS

from .conftest import HELLO, Api
from .test_api_embedded import finished, new_id, put_flow, start

SVG = "{http://www.w3.org/2000/svg}"
FAILING_TWICE = {
    "flowlets": [
        {
            "name": "flaky",
            "module_ref": "fail",
            "input": {"times": 1, "message": "<b onmouseover=alert(1)>x</b>"},
            "retry": {"max_attempts": 2, "backoff_ms": 5},
        },
        {"name": "after", "module_ref": "echo", "depends_on": ["flaky"]},
    ]
}


def svg_of(response: object) -> ET.Element:
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("image/svg+xml")  # type: ignore[attr-defined]
    assert "default-src 'none'" in response.headers["content-security-policy"]  # type: ignore[attr-defined]
    return ET.fromstring(response.text)  # type: ignore[attr-defined]


def test_a_plays_timeline_is_an_svg_with_a_bar_per_attempt_and_its_legend(api: Api) -> None:
    name = new_id("flow")
    with api.server.client(api.acme) as client:
        put_flow(client, name, FAILING_TWICE)
        play_id = start(client, name).json()["play_id"]
        finished(client, play_id)
        root = svg_of(client.get(f"/v1/plays/{play_id}/timeline"))
    (chart,) = [e for e in root.iter(f"{SVG}svg") if e.get("class") == "timeline"]
    assert chart.get("data-play") == play_id
    outcomes = [g.get("data-outcome") for g in chart.iter(f"{SVG}g") if "attempt" in (g.get("class") or "").split()]
    assert outcomes == ["failed", "succeeded", "succeeded"]
    hovers = [t.text or "" for t in chart.iter(f"{SVG}title")]
    assert any("error: <b onmouseover=alert(1)>x</b>" in h for h in hovers)  # text, escaped when written
    assert [e.get("class") for e in root.iter(f"{SVG}svg") if e.get("class") == "legend"] == ["legend"]


def test_a_flows_dag_is_an_svg_of_its_version(api: Api) -> None:
    name = new_id("flow")
    with api.server.client(api.acme) as client:
        put_flow(client, name)
        put_flow(client, name, FAILING_TWICE)
        latest = svg_of(client.get(f"/v1/flows/{name}/dag"))
        first = svg_of(client.get(f"/v1/flows/{name}/dag", params={"version": 1}))
        assert client.get(f"/v1/flows/{name}/dag", params={"version": 9}).status_code == 404
        bad = client.get(f"/v1/flows/{name}/dag", params={"version": 0})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "version"]
    assert (latest.get("data-version"), first.get("data-version")) == ("2", "1")
    modules = {g.get("data-flowlet"): g.get("data-module") for g in first.iter(f"{SVG}g") if g.get("data-flowlet")}
    assert modules == {f["name"]: f["module_ref"] for f in HELLO["flowlets"]}  # type: ignore[index]


def test_flows_are_listed_by_name_with_their_versions_by_page(api: Api) -> None:
    names = sorted(new_id("list") for _ in range(3))
    with api.server.client(api.acme) as client:
        for name in names:
            put_flow(client, name)
        put_flow(client, names[0], {**HELLO, "description": "v2"})
        every = client.get("/v1/flows", params={"limit": 500}).json()
        mine = [f for f in every["items"] if f["name"] in names]
        assert mine == [{"name": names[0], "versions": [1, 2]}] + [{"name": n, "versions": [1]} for n in names[1:]]
        seen, cursor = [], None
        while True:
            page = client.get("/v1/flows", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [f["name"] for f in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f["name"] for f in every["items"]] == sorted(seen)
        bad = client.get("/v1/flows", params={"cursor": "<x>"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_kv_keys_are_listed_by_prefix_by_page(api: Api) -> None:
    prefix = new_id("kv") + "/"
    with api.server.client(api.acme) as client:
        for name in ("c", "a", "b/1", "b/2"):
            assert client.put(f"/v1/kv/{prefix}{name}", json={"value": name}).status_code == 200
        listed = client.get("/v1/kv", params={"prefix": prefix}).json()
        assert listed == {"items": [{"key": f"{prefix}{n}"} for n in ("a", "b/1", "b/2", "c")], "next_cursor": None}
        first = client.get("/v1/kv", params={"prefix": prefix, "limit": 2}).json()
        assert first["next_cursor"] == f"{prefix}b/1"
        rest = client.get("/v1/kv", params={"prefix": prefix, "limit": 2, "cursor": first["next_cursor"]}).json()
        assert [i["key"] for i in rest["items"]] == [f"{prefix}b/2", f"{prefix}c"]
        assert client.get("/v1/kv", params={"prefix": prefix + "b/"}).json()["items"] == [
            {"key": f"{prefix}b/1"},
            {"key": f"{prefix}b/2"},
        ]
        for params, field in (({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"prefix": "x" * 513}, "prefix")):
            bad = client.get("/v1/kv", params=params)
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", field], params


def test_another_companys_play_flow_and_keys_are_not_found_or_absent(api: Api) -> None:
    name, prefix = new_id("flow"), new_id("kv")
    with api.server.client(api.acme) as acme:
        put_flow(acme, name)
        play_id = start(acme, name).json()["play_id"]
        finished(acme, play_id)
        assert acme.put(f"/v1/kv/{prefix}", json={"value": 1}).status_code == 200
    with api.server.client(api.globex) as globex:
        assert globex.get(f"/v1/plays/{play_id}/timeline").status_code == 404
        assert globex.get(f"/v1/flows/{name}/dag").status_code == 404
        assert name not in [f["name"] for f in globex.get("/v1/flows", params={"limit": 500}).json()["items"]]
        assert globex.get("/v1/kv", params={"prefix": prefix}).json()["items"] == []
    with api.server.client() as anonymous:
        before = refused(anonymous)
        for path in (f"/v1/plays/{play_id}/timeline", f"/v1/flows/{name}/dag", "/v1/flows", "/v1/kv"):
            response = anonymous.get(path)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
        assert refused(anonymous).get("401", 0) >= before.get("401", 0) + 4  # counted where refused


def refused(client: httpx.Client) -> dict[str, float]:
    """flow8_http_refused_total by status, from /metrics."""
    page = client.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'flow8_http_refused_total\{status="(\d+)"\} (\S+)', page)}


def test_the_ui_assets_are_public_and_ship_no_outside_reference(api: Api) -> None:
    with api.server.client() as client:
        index = client.get("/ui/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        shipped = sorted(p.name for p in ASSETS.iterdir())
        assert {"index.html", "app.js", "ui.css"} <= set(shipped)
        for asset in shipped:
            body = client.get(f"/ui/{asset}")
            assert body.status_code == 200, asset
            text = body.text.replace("http://www.w3.org/2000/svg", "")  # a name, not a place
            assert "http://" not in text and "https://" not in text, asset  # nothing from elsewhere
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|style=", text), asset
        assert client.get("/ui/../pyproject.toml").status_code == 404
