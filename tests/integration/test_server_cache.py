"""The server's explanation cache (dataplane.py): bounded by --cache-bytes, and its size
exported as a gauge. (The cache's own rules: unit/test_cache.py.)"""

from __future__ import annotations

from pathlib import Path

import whybert
from _servers import ServerThread, tiny_settings


def test_the_server_bounds_its_cache_with_the_setting(tiny_model_dir: Path) -> None:
    with ServerThread(tiny_settings(tiny_model_dir, cache_bytes=1)) as server:
        assert server.server is not None and server.server.dataplane is not None
        assert server.server.dataplane.cache.max_bytes == 1
        with whybert.Client(server.target, retries=0) as client:
            first, second = (client.explain(["a quiet evening"], max_evals=10)[0] for _ in "12")
        assert not first.cached and not second.cached  # too large for one byte: not kept
        assert len(server.server.dataplane.cache) == 0


def test_the_cache_bytes_gauge_follows_the_cache(threaded_server: ServerThread) -> None:
    """On the module's server, with the default settings."""
    server = threaded_server
    assert server.server is not None and server.server.dataplane is not None
    cache = server.server.dataplane.cache
    assert cache.max_bytes == 256 * 1024 * 1024
    with whybert.Client(server.target, retries=0) as client:
        first, second = (client.explain(["a quiet evening"], max_evals=10)[0] for _ in "12")
    assert not first.cached and second.cached
    gauge = server.server.metrics.registry.get_sample_value("whybert_cache_bytes")
    assert gauge == cache.bytes > 0
