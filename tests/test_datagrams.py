"""The data dir's datagram sockets: the door's poke to its sync daemon (sync.wake) and
the bound end both it and the door's control socket use (core.datagrams)."""

from __future__ import annotations

from pathlib import Path

from core.datagrams import MAX_SOCKET_PATH, BoundSocket, fits
from sync.wake import WAKE_SOCKET, Poker, WakeListener


async def test_a_poke_wakes_the_daemon_and_pokes_meanwhile_coalesce(tmp_path: Path) -> None:
    poker, listener = Poker(tmp_path), WakeListener(tmp_path)
    assert not poker.poke()  # nobody listening: a hint lost, never an error
    assert listener.open()
    try:
        assert not await listener.wait(0.01)
        assert poker.poke() and poker.poke() and poker.poke()
        assert await listener.wait(5)
        assert not await listener.wait(0.01)  # the three were one wake
        listener.set()
        assert await listener.wait(0)
    finally:
        listener.close()
        poker.close()
    assert not (tmp_path / WAKE_SOCKET).exists()


async def test_a_stale_socket_file_a_dead_process_left_is_replaced(tmp_path: Path) -> None:
    (tmp_path / WAKE_SOCKET).write_text("left behind")
    listener = WakeListener(tmp_path)
    assert listener.open()
    try:
        assert Poker(tmp_path).poke()
        assert await listener.wait(5)
    finally:
        listener.close()


async def test_a_path_too_long_for_a_socket_is_refused_not_raised(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH - len(str(tmp_path))))
    deep.mkdir()
    assert not fits(deep / WAKE_SOCKET)
    assert not WakeListener(deep).open()
    assert not Poker(deep).poke()


async def test_an_unwritable_place_is_refused_not_raised(tmp_path: Path) -> None:
    seen: list[object] = []
    bound = BoundSocket(tmp_path / "missing-dir" / "sock", seen.append)
    assert not bound.open()
    bound.close()  # closing what never opened is harmless
    assert seen == []
