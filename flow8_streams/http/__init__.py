"""``flow8 serve``: the HTTP API over the embedded runtime or the streams runtime.

``keys`` (API keys: made, hashed, checked; no web framework, so the CLI uses it too), ``backends``
(the one protocol the routes code against, embedded and streams), ``app`` (the FastAPI factory:
auth, limits, gzip, errors, metrics), one ``routes_*`` module per resource family, ``serve``
(uvicorn and the backend's life), ``results`` and ``history`` (what ``--streams`` reads off Kafka:
finished plays, a play's events), ``audits`` (verdicts through the audit query cache).
"""
