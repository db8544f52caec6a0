"""Shared test machinery: network namespaces, a real unbound upstream, dnsperf."""
