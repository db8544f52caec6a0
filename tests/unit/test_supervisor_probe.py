"""The supervisor's Prober (supervisor/probe.py) against a worker end made of
a real socketpair and dnspython: only an answer with the probe's own ID
counts, each answer's text is the worker's, and a probe left unanswered is
reported at the next tick. No root."""
from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rrset
import uvloop

from supervisor.probe import Prober


def answer(query_wire: bytes, text: str, qid: int | None = None) -> bytes:
    query = dns.message.from_wire(query_wire)
    reply = dns.message.make_response(query)
    if qid is not None:
        reply.id = qid
    reply.answer.append(dns.rrset.from_text(query.question[0].name, 0, "CH", "TXT", f'"{text}"'))
    return reply.to_wire()


def test_only_the_probes_own_answer_counts_and_its_text_is_the_workers():
    async def scenario():
        ours, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        worker.setblocking(False)
        heard: list[str] = []
        prober = Prober(ours, asyncio.get_running_loop(), lambda latency, text: heard.append(text))
        missed = []
        texts = ["slot=A gen=1", "slot=A gen=1", "slot=A gen=1", "slot=A gen=2"]
        for text in texts:
            missed.append(prober.tick())
            query = worker.recv(512)
            assert dns.message.from_wire(query).question[0].name.to_text() == "ready.twindns."
            worker.send(answer(query, "forged", qid=(int.from_bytes(query[:2], "big") + 1) % 65536))
            worker.send(answer(query, text))
            worker.send(answer(query, "a second answer to the same probe"))
            await asyncio.sleep(0.02)
        missed.append(prober.tick())        # the last probe was answered
        worker.recv(512)                     # this one is not
        missed.append(prober.tick())
        prober.close()
        ours.close()
        worker.close()
        return heard, missed

    heard, missed = uvloop.run(scenario())
    assert heard == ["slot=A gen=1", "slot=A gen=1", "slot=A gen=1", "slot=A gen=2"]
    assert missed == [False, False, False, False, False, True]
