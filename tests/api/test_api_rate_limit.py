"""``http.rate_limit_per_second``: a key over it gets 429 with Retry-After; other keys go on."""

from __future__ import annotations

from pathlib import Path

from .server import clean_env, make_key, serving


def test_a_key_over_its_rate_is_429_with_retry_after(tmp_path: Path) -> None:
    env = clean_env(FLOW8_HTTP__RATE_LIMIT_PER_SECOND="0.2")  # one request per 5 s: the second is early
    hasty = make_key("--db", tmp_path / "rl.db", company="acme", cwd=tmp_path, env=env)
    calm = make_key("--db", tmp_path / "rl.db", company="acme", cwd=tmp_path, env=env)
    with serving("--db", tmp_path / "rl.db", cwd=tmp_path, env=env) as server:
        with server.client(hasty) as client:
            assert client.get("/v1/plays").status_code == 200
            refused = client.get("/v1/plays")
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 5
            assert "rate_limit_per_second" in refused.json()["detail"]
        with server.client(calm) as other:
            assert other.get("/v1/plays").status_code == 200
        with server.client() as anonymous:
            assert 'flow8_http_refused_total{status="429"} 1.0' in anonymous.get("/metrics").text
