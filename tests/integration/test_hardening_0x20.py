"""Issue 14 item 5: upstream queries carry their name in random letter case
(DNS 0x20), so a forged answer that guessed the port and the ID is still
refused unless it also guessed the case; a server that does not echo the
case is asked again in lower case at once, and after three such answers in
a row without 0x20."""
from __future__ import annotations

import dns.message
import pytest

from helpers.scripted_upstream import FORGED, REAL, Scripted
from helpers.worker import Worker

pytestmark = pytest.mark.netns


def config(server: str) -> str:
    return f'[[upstream]]\nzone = "."\nservers = ["{server}"]\ntimeout = 2.0\n'


def answers(reply: dns.message.Message) -> set[str]:
    return {rd.address for rrset in reply.answer for rd in rrset}


def test_a_forgery_that_guessed_port_and_id_but_not_the_case_is_refused(netns, tmp_path):
    forger = Scripted(netns, tmp_path, "guessed", addr="127.0.0.3", delay=0.2)
    w = Worker(netns, tmp_path, upstream=None, config=config("127.0.0.3"))
    try:
        for i in range(5):
            reply = w.ask(f"victim{i}.example.com")
            assert answers(reply) == {REAL}, f"forged answer {answers(reply)} accepted"
        assert forger.counts()["forged"] >= 5
    finally:
        w.stop()
        forger.stop()


def test_a_server_that_does_not_echo_the_case_still_answers(netns, tmp_path):
    lower = Scripted(netns, tmp_path, "lowercase", addr="127.0.0.3")
    w = Worker(netns, tmp_path, upstream=None, config=config("127.0.0.3"))
    try:
        for i in range(6):
            assert answers(w.ask(f"name{i}.example.com")) == {REAL}
        # Three re-asks, then lower case from the start: 3 x 2 + 3 x 1 queries.
        assert lower.counts()["udp_queries"] == 9
        assert FORGED not in open(w.log_path).read()
        assert "0x20 off" in open(w.log_path).read()
    finally:
        w.stop()
        lower.stop()


def test_a_flood_of_unwanted_replies_keeps_the_answers_then_in_flight_out_of_the_cache(netns, tmp_path):
    """unbound's unwanted-reply-threshold: each query here draws 3 replies
    that answer nothing we asked (ID + 1, another question, a QR=0 copy)."""
    spoofer = Scripted(netns, tmp_path, "spoof", addr="127.0.0.3", delay=0.1)
    w = Worker(netns, tmp_path, upstream=None,
               config=config("127.0.0.3") + "\n[cache]\nunwanted_reply_threshold = 5\n")
    try:
        for _ in range(2):
            assert answers(w.ask("first.example.com")) == {REAL}    # 3 unwanted: under the threshold, cached
        asked = spoofer.counts()["udp_queries"]
        assert asked == 1
        for _ in range(2):
            assert answers(w.ask("second.example.com")) == {REAL}   # 6 unwanted: threshold reached meanwhile
        assert spoofer.counts()["udp_queries"] - asked >= 2, "the answer in flight at the threshold was cached"
        assert "unwanted_reply_threshold 5" in open(w.log_path).read()
    finally:
        w.stop()
        spoofer.stop()
