"""Benchmarks for messages_mw: run ``python -m benchmarks`` (see ``__main__.py``)."""
