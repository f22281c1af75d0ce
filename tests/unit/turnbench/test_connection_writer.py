"""The connection's writer: queued (a cancelled request never cancels a write halfway) or direct (the adapter's
send survives a cancel, so request tasks send themselves); both keep order and fail alike once the peer is gone."""

from __future__ import annotations

import asyncio

import pytest

from turnbench.connection import ConnectionGone, _Writer


class Peer:
    """A send that takes ``delay_s`` per message and records what it wrote whole; fails after ``fail_after``."""

    def __init__(self, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.delay_s, self.fail_after = delay_s, fail_after
        self.written: list[bytes] = []
        self.cancelled_mid_write = 0

    async def send(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.written) >= self.fail_after:
            raise OSError("peer reset")
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled_mid_write += 1
            raise
        self.written.append(data)


@pytest.mark.parametrize("direct", [False, True], ids=["queued", "direct"])
async def test_messages_keep_their_order_and_a_dead_peer_fails_every_later_write(direct: bool) -> None:
    peer = Peer(fail_after=3)
    w = _Writer(peer.send, direct=direct)
    for i in range(3):
        await w.write(b"%d" % i)
    with pytest.raises(ConnectionGone, match="peer reset"):
        await w.write(b"3")
    with pytest.raises(ConnectionGone):
        await w.write(b"4")
    assert peer.written == [b"0", b"1", b"2"]
    w.close()


async def test_queued_a_cancelled_request_leaves_its_write_whole() -> None:
    peer = Peer(delay_s=0.05)
    w = _Writer(peer.send)
    task = asyncio.create_task(w.write(b"big"))
    await asyncio.sleep(0.01)  # the writer task is inside send now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.write(b"next")  # written after the first, which finished
    assert peer.written == [b"big", b"next"] and peer.cancelled_mid_write == 0
    w.close()


async def test_direct_sends_from_the_request_task_and_close_refuses_more() -> None:
    peer = Peer()
    w = _Writer(peer.send, direct=True)
    await w.write(b"a")
    assert w._task is None and peer.written == [b"a"]  # no writer task at all
    w.close()
    with pytest.raises(ConnectionGone):
        await w.write(b"b")
