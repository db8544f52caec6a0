"""A scripted upstream DNS server, for what unbound cannot do on demand:
stay silent, truncate every UDP answer, or forge answers before the real one.

Run it inside a test namespace:

    python scripted_upstream.py --listen 127.0.0.3:53 --mode MODE --state FILE

Modes (every real answer is `NAME A 192.0.2.77`, every forged one
`NAME A 198.51.100.66`):
  answer  UDP and TCP answer every query (TCP pipelined, several per connection)
  lossy   like answer, but the first UDP datagram asking each name is dropped
          (a lost packet: only a repeated ask gets the answer)
  silent  count queries, never answer
  tc      UDP answers carry TC=1 and no records; TCP answers are full
  cname   UDP answers are a CNAME alone (NAME CNAME target.elsewhere.), no
          SOA: what a forwarder that does not chase the chain returns
  guessed UDP queries first get a forgery that guessed port and ID but
          not the letter case (the question in lower case, A 198.51.100.66),
          then after --delay the real answer echoing the question exactly
  lowercase  UDP answers carry the question in lower case (a server that
          does not echo 0x20)
  outofzone  UDP answers carry records about other zones: names starting
          with "chain" get `NAME CNAME a.test.` plus a forged `a.test. A
          198.51.100.66`; others the real A plus `evil.example. A
          198.51.100.66` (additional) and `test. NS ns.evil.example.` (authority)
  spoof   each UDP query first gets forged answers (from another port of our
          address, from another address, with the ID + 1, for another
          question, and a QR=0 copy), then the real answer after --delay
          seconds; names starting with "nothing-real" get only the forgeries

Over TCP, answers to names starting with "slow" are sent --delay seconds
late (so later queries on the connection are answered first), and with
--close-after N the server closes each connection after N answers.

FILE (JSON) is rewritten after every event with the counters: udp_queries,
tcp_connections, tcp_queries, forged, and the lists udp_ports (source port of
each UDP query) and ids (message ID of each query). It exists once the server listens.
`Scripted` starts and stops one from a test.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rrset

REAL = "192.0.2.77"
FORGED = "198.51.100.66"
SPOOF_SOURCE_IP = "127.0.0.254"   # the forgery "from another address"


def answer(query: dns.message.Message, address: str, query_id: int | None = None,
           name=None) -> bytes:
    reply = dns.message.make_response(query)
    q = query.question[0]
    if name is not None:
        reply.question = [dns.rrset.RRset(dns.name.from_text(name), q.rdclass, q.rdtype)]
    if q.rdtype == 1:
        reply.answer.append(dns.rrset.from_text(name or q.name, 300, "IN", "A", address))
    if query_id is not None:
        reply.id = query_id
    return reply.to_wire()


def lower_question(reply: bytes) -> bytes:
    """`reply` with its question name (uncompressed at offset 12; records
    point back to it) in lower case."""
    end = reply.index(0, 12)
    return reply[:12] + reply[12:end].lower() + reply[end:]


class Server:
    def __init__(self, mode: str, state: Path, delay: float, ip: str, port: int,
                 close_after: int = 0) -> None:
        self.mode, self.state, self.delay, self.close_after = mode, state, delay, close_after
        self.ip, self.port = ip, port
        self.counts = {"udp_queries": 0, "tcp_connections": 0, "tcp_queries": 0, "forged": 0,
                       "udp_ports": [], "ids": []}
        self.udp: asyncio.DatagramTransport | None = None
        self.other_port: socket.socket | None = None
        self.other_ip: socket.socket | None = None
        self.seen: set = set()      # lossy: names whose first datagram was dropped

    def save(self) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counts))
        os.replace(tmp, self.state)

    # -- UDP -----------------------------------------------------------------
    def on_datagram(self, data: bytes, addr) -> None:
        self.counts["udp_queries"] += 1
        self.counts["udp_ports"].append(addr[1])
        try:
            query = dns.message.from_wire(data)
        except Exception:
            self.save()
            return
        self.counts["ids"].append(query.id)
        self.save()
        if self.mode == "lossy" and query.question[0].name not in self.seen:
            self.seen.add(query.question[0].name)
        elif self.mode in ("answer", "lossy"):
            self.udp.sendto(answer(query, REAL), addr)
        elif self.mode == "tc":
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.TC
            self.udp.sendto(reply.to_wire(), addr)
        elif self.mode == "guessed":
            self.counts["forged"] += 1
            self.save()
            self.udp.sendto(lower_question(answer(query, FORGED)), addr)
            asyncio.get_running_loop().call_later(self.delay, self.udp.sendto, answer(query, REAL), addr)
        elif self.mode == "lowercase":
            self.udp.sendto(lower_question(answer(query, REAL)), addr)
        elif self.mode == "outofzone":
            reply = dns.message.make_response(query)
            name = query.question[0].name
            if name.to_text().lower().startswith("chain"):
                reply.answer.append(dns.rrset.from_text(name, 300, "IN", "CNAME", "a.test."))
                reply.answer.append(dns.rrset.from_text("a.test.", 300, "IN", "A", FORGED))
            else:
                reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", REAL))
                reply.authority.append(dns.rrset.from_text("test.", 300, "IN", "NS", "ns.evil.example."))
                reply.additional.append(dns.rrset.from_text("evil.example.", 300, "IN", "A", FORGED))
            self.udp.sendto(reply.to_wire(), addr)
        elif self.mode == "cname":
            reply = dns.message.make_response(query)
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "CNAME",
                                                    "target.elsewhere."))
            self.udp.sendto(reply.to_wire(), addr)
        elif self.mode == "spoof":
            self.forge(query, addr)
            if not query.question[0].name.to_text().lower().startswith("nothing-real"):
                asyncio.get_running_loop().call_later(
                    self.delay, self.udp.sendto, answer(query, REAL), addr)

    def forge(self, query: dns.message.Message, addr) -> None:
        forgeries = [
            (self.other_port.sendto, answer(query, FORGED)),
            (self.other_ip.sendto, answer(query, FORGED)),
            (self.udp.sendto, answer(query, FORGED, query_id=(query.id + 1) % 65536)),
            (self.udp.sendto, answer(query, FORGED, name="other.test.")),
        ]
        not_a_response = dns.message.from_wire(answer(query, FORGED))
        not_a_response.flags &= ~dns.flags.QR
        forgeries.append((self.udp.sendto, not_a_response.to_wire()))
        for send, wire in forgeries:
            send(wire, addr)
            self.counts["forged"] += 1
        self.save()

    # -- TCP -----------------------------------------------------------------
    async def on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["tcp_connections"] += 1
        self.save()
        answered = 0
        try:
            while not self.close_after or answered < self.close_after:
                length = int.from_bytes(await reader.readexactly(2), "big")
                query = dns.message.from_wire(await reader.readexactly(length))
                self.counts["tcp_queries"] += 1
                self.counts["ids"].append(query.id)
                self.save()
                if self.mode == "silent":
                    continue
                wire = answer(query, REAL)
                framed = len(wire).to_bytes(2, "big") + wire
                answered += 1
                if query.question[0].name.to_text().lower().startswith("slow"):
                    asyncio.get_running_loop().call_later(self.delay, writer.write, framed)
                else:
                    writer.write(framed)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                server.on_datagram(data, addr)

        self.udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.ip, self.port))
        self.other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other_port.bind((self.ip, 0))
        self.other_ip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other_ip.bind((SPOOF_SOURCE_IP, self.port))
        tcp = await asyncio.start_server(self.on_connection, self.ip, self.port)
        self.save()
        async with tcp:
            await tcp.serve_forever()


class Scripted:
    """A scripted upstream running inside `ns`; counts() reads its counters."""

    def __init__(self, ns, workdir: Path, mode: str, addr: str = "127.0.0.3",
                 port: int = 53, delay: float = 0.1, close_after: int = 0) -> None:
        self.addr, self.port = addr, port
        self.state = Path(workdir) / f"scripted-{addr}-{port}.json"
        self.state.unlink(missing_ok=True)
        self.proc = ns.popen([sys.executable, __file__, "--listen", f"{addr}:{port}",
                              "--mode", mode, "--state", str(self.state), "--delay", str(delay),
                              "--close-after", str(close_after)],
                             stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.state.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scripted upstream did not start (exit {self.proc.poll()})")
            time.sleep(0.02)

    @property
    def server(self) -> str:
        return f"{self.addr}:{self.port}"

    def counts(self) -> dict:
        return json.loads(self.state.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--mode", choices=("answer", "lossy", "silent", "tc", "spoof", "cname", "outofzone", "guessed", "lowercase"), required=True)
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--delay", type=float, default=0.1)
    p.add_argument("--close-after", type=int, default=0)
    args = p.parse_args()
    ip, _, port = args.listen.rpartition(":")
    asyncio.run(Server(args.mode, args.state, args.delay, ip, int(port), args.close_after).run())


if __name__ == "__main__":
    main()
