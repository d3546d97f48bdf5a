"""``flow8_streams.redact``: connection strings as they may be shown, without their secrets."""

from __future__ import annotations

import pytest

from flow8_streams.redact import redact_uri, scrub


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("mongodb://bob:s3cret@h1:27017,h2/db?replicaSet=rs0", "mongodb://bob:***@h1:27017,h2/db?replicaSet=rs0"),
        ("mongodb+srv://bob:s3cret@cluster.example.com/", "mongodb+srv://bob:***@cluster.example.com/"),
        ("mongodb://bob:s3/cret@h/db", "mongodb://bob:***@h/db"),
        ("mongodb://bob:s3@cret@h", "mongodb://bob:***@h"),
        ("mongodb://bob:s3cret/db", "mongodb://bob:***/db"),
        ("mongodb://h/?tlsCertificateKeyFilePassword=s3cret&w=1", "mongodb://h/?tlsCertificateKeyFilePassword=***&w=1"),
        ("mongodb://x@h/?authMechanism=MONGODB-X509", "mongodb://x@h/?authMechanism=MONGODB-X509"),
        ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
        ("mongodb://[::1]:27017/db", "mongodb://[::1]:27017/db"),
        ("SASL_SSL://user:s3cret@k1:9092,k2:9092", "SASL_SSL://user:***@k1:9092,k2:9092"),
        ("k1:9092,k2:9092", "k1:9092,k2:9092"),
        ("", ""),
    ],
)
def test_redact_uri_hides_passwords_and_keeps_the_rest(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    assert "s3" not in redact_uri(uri)


def test_scrub_removes_every_quoted_secret() -> None:
    uri = "mongodb://bob:s3/cret@h:27017/db"
    text = f"cannot parse {uri}: port 's3/cret@h' and user 'bob:s3/cret'"
    assert scrub(text, uri) == "cannot parse mongodb://bob:***@h:27017/db: port '***@h' and user '***'"
    assert scrub("nothing to hide", uri, "mongodb://h") == "nothing to hide"
