"""Everything of the streams runtime that touches faust's or aiokafka's internals.

Each override here is thin and names the rule it keeps; the private names used are
checked against the pinned versions by ``tests/streams/test_private_names.py``.
"""
