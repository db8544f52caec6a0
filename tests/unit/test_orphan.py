"""An orphaned worker (worker/orphan.py) leaves once its listen addresses are gone from the host."""
from __future__ import annotations

import asyncio

from worker.orphan import Orphanage, address_present


def test_address_present_tells_host_addresses_from_others():
    assert address_present("127.0.0.1") and address_present("0.0.0.0")
    assert not address_present("192.0.2.77")        # TEST-NET-1: on no host


def run_orphanage(addresses: list[str]) -> bool:
    async def main() -> bool:
        expired = asyncio.Event()
        orphanage = Orphanage(lambda sock: None, expired.set, addresses, limit=60, check_interval=0.05)
        try:
            await asyncio.wait_for(expired.wait(), 0.5)
            return True
        except TimeoutError:
            return False
        finally:
            orphanage.close()
    return asyncio.run(main())


def test_orphan_drains_once_no_listen_address_is_left():
    assert run_orphanage(["192.0.2.77"])


def test_orphan_keeps_serving_while_one_address_is_there():
    assert not run_orphanage(["192.0.2.77", "127.0.0.1"])
