"""The miss path: one upstream query per distinct key in flight, shared by
every client that asks the same question meanwhile; the answer is stored and
handed to each waiting client."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.OPT
import dns.rrset

from worker import wire
from worker.cache import Cache, Entry, entry_from_response
from worker.config import CacheConfig, HeaderRule
from worker.upstream import Forwarder, UpstreamError

log = logging.getLogger(__name__)

Waiter = Callable[[Entry], None]

# Distinct questions in flight upstream at most. Past it a miss is answered
# SERVFAIL at once: a flood of unique names (or a slow upstream) must not
# grow memory without bound; unbound's num-queries-per-thread plays this role.
MAX_PENDING = 10000


def longest_match(rules: Sequence[tuple[dns.name.Name, HeaderRule]],
                  qname: dns.name.Name) -> HeaderRule | None:
    """The rule whose zone is the longest suffix of qname, if any."""
    best, best_len = None, -1
    for zone, rule in rules:
        if qname.is_subdomain(zone) and len(zone) > best_len:
            best, best_len = rule, len(zone)
    return best


class LocalAnswers:
    """Names the worker answers itself (class CH): the supervisor's readiness
    probe `ready.twindns. CH TXT`; other CH questions are REFUSED."""

    PROBE = dns.name.from_text("ready.twindns.")

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def answer(self, query: dns.message.Message) -> bytes:
        reply = dns.message.make_response(query)
        q = query.question[0]
        if q.name == self.PROBE and q.rdtype == dns.rdatatype.TXT:
            reply.answer.append(dns.rrset.from_text(q.name, 0, "CH", "TXT", f'"{self.identity}"'))
        else:
            reply.set_rcode(dns.rcode.REFUSED)
        return reply.to_wire()


class Resolver:
    """Fills the cache from upstream."""

    def __init__(self, forwarder: Forwarder, cache: Cache, policy: CacheConfig,
                 headers: Sequence[HeaderRule], local: LocalAnswers,
                 max_pending: int = MAX_PENDING) -> None:
        self.forwarder = forwarder
        self.max_pending = max_pending
        self.cache = cache
        self.policy = policy
        self.headers = tuple((dns.name.from_text(r.zone), r) for r in headers)
        self.local = local
        self.pending: dict[bytes, asyncio.Future] = {}
        self.opt_rdata = dns.rdtypes.ANY.OPT.OPT(wire.OUR_UDP_PAYLOAD, dns.rdatatype.OPT, ())
        self.upstream_failures = 0
        self.overloaded = 0

    def miss(self, q: wire.Question, waiter: Waiter) -> bool:
        """Call waiter(entry) once an answer for q is known (it always is:
        an upstream failure gives a SERVFAIL entry). False, and no call, when
        max_pending distinct questions are already in flight."""
        fut = self.pending.get(q.key)
        if fut is None:
            if len(self.pending) >= self.max_pending:
                self.overloaded += 1
                return False
            fut = asyncio.get_running_loop().create_future()
            self.pending[q.key] = fut
            asyncio.get_running_loop().create_task(self._fetch(q, fut))
        fut.add_done_callback(lambda f: waiter(f.result()))
        return True

    def _query(self, q: wire.Question) -> dns.message.Message:
        """The upstream query for q. Built field by field: make_query() spends
        most of its ~16 us re-creating the same OPT record (this takes ~5 us)."""
        query = dns.message.QueryMessage()
        query.flags = dns.flags.RD | (dns.flags.CD if q.cd else 0)
        query.question.append(dns.rrset.RRset(dns.name.Name(wire.labels(q.key)), q.qclass, q.qtype))
        opt = dns.rrset.RRset(dns.name.root, wire.OUR_UDP_PAYLOAD, dns.rdatatype.OPT)
        opt.add(self.opt_rdata, wire.EDNS_DO if q.do else 0)
        query.opt = opt
        return query

    async def _fetch(self, q: wire.Question, fut: asyncio.Future) -> None:
        try:
            fut.set_result(await self._resolve(q))
        except BaseException as e:  # noqa: BLE001 - waiters must always get an answer
            if not isinstance(e, Exception):
                fut.cancel()
                raise
            log.exception("miss path failed for %r", q.key)
            fut.set_result(self._servfail(self._query(q)))
        finally:
            self.pending.pop(q.key, None)

    async def _resolve(self, q: wire.Question) -> Entry:
        query = self._query(q)
        if q.qclass == wire.CLASS_CH:
            return entry_from_response(self.local.answer(query), time.monotonic(),
                                       CacheConfig(servfail_ttl=0), None, q.do)
        try:
            answer = await self.forwarder.forward(query)
            rule = longest_match(self.headers, query.question[0].name)
            entry = entry_from_response(answer, time.monotonic(), self.policy, rule, q.do)
        except (UpstreamError, wire.WireError):
            self.upstream_failures += 1
            return self._servfail(query)
        if entry.expires > entry.stored_at:
            self.cache.put(q.key, entry)
        return entry

    def _servfail(self, query: dns.message.Message) -> Entry:
        reply = dns.message.make_response(query)
        reply.set_rcode(dns.rcode.SERVFAIL)
        reply.flags |= dns.flags.RA
        return entry_from_response(reply.to_wire(), time.monotonic(), CacheConfig(servfail_ttl=0),
                                   None, bool(query.ednsflags & dns.flags.DO))
