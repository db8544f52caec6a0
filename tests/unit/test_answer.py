"""The hit path's exact-query index (worker/answer.py). No root."""
from __future__ import annotations

import dns.message
import dns.rrset

from worker import wire
from worker.answer import Answerer
from worker.cache import Cache
from worker.response import entry_from_response
from worker.config import CacheConfig
from worker.stats import Stats


def cache_answer(cache: Cache, query: bytes) -> None:
    q = wire.parse_query(query)
    upstream = dns.message.make_query("h1.hit.test", "A", use_edns=0, want_dnssec=q.do)
    reply = dns.message.make_response(upstream)
    reply.answer.append(dns.rrset.from_text("h1.hit.test.", 3600, "IN", "A", "192.0.2.1"))
    cache.put(q.key, entry_from_response(reply.to_wire(), 0.0, CacheConfig(), None, q.do))


def test_only_whole_plain_queries_are_indexed_and_replies_match():
    cache = Cache(100)
    answerer = Answerer(cache, None, Stats())
    for kw in (dict(use_edns=False), dict(use_edns=0)):
        query = dns.message.make_query("h1.hit.test", "A", **kw).to_wire()
        cache_answer(cache, query)
        padded = query + b"\x00" * 3000      # trailing bytes a client made up
        first = answerer.answer(padded, True, None, None, 1.0)
        assert dns.message.from_wire(first).answer, "still answered"
        assert answerer.exact == {} or all(len(k) < 100 for k in answerer.exact), "no 3 KB keys"
        via_index = [answerer.answer(query, True, None, None, 1.0) for _ in range(2)]
        assert len([k for k in answerer.exact if len(k) == len(query) - 2]) >= 1
        assert answerer.exact_reply(query, 1.0) == via_index[1]
        assert dns.message.from_wire(via_index[1]).answer[0][0].address == "192.0.2.1"


def test_an_entry_that_left_the_cache_is_not_served_from_the_index():
    cache = Cache(1)
    answerer = Answerer(cache, None, Stats())
    query = dns.message.make_query("h1.hit.test", "A", use_edns=False).to_wire()
    cache_answer(cache, query)
    answerer.answer(query, True, None, None, 1.0)
    assert answerer.exact_reply(query, 1.0) is not None
    other = dns.message.make_query("other.test", "A", use_edns=False).to_wire()
    q = wire.parse_query(other)
    reply = dns.message.make_response(dns.message.make_query("other.test", "A"))
    reply.answer.append(dns.rrset.from_text("other.test.", 60, "IN", "A", "192.0.2.9"))
    cache.put(q.key, entry_from_response(reply.to_wire(), 0.0, CacheConfig(), None, False))  # evicts h1
    assert answerer.exact_reply(query, 1.0) is None
    assert answerer.exact == {}
    expired_at = 3601.0
    cache_answer(cache, query)
    answerer.answer(query, True, None, None, 2.0)
    assert answerer.exact_reply(query, expired_at) is None


def test_pending_is_falsy_but_not_a_drop():
    from worker.answer import PENDING
    assert not PENDING and PENDING is not None and PENDING != b""
