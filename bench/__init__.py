"""Benchmarks run by hand (`make bench`), not part of `make test`.

Every server they measure binds 127.0.0.1 on a free port, is started by the
benchmark and stopped by it; every load run is bounded in time and count.
"""
