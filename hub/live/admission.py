"""Admission: how many WebSockets a client address, and the whole process, may hold.

A socket that has not said `hello` yet costs the attacker nothing but a TCP connection, so
it must not take a place a real client needs. Sockets are therefore counted in two kinds:

- waiting (accepted, no valid `hello` yet): at most `max_waiting_per_client` per address and
  only for the hello timeout. When an address is at its bound, its *oldest* waiting socket
  makes room for the new one, so a real client behind the same address (NAT, a proxy) gets
  in: it says `hello` at once, while the flood's sockets are older and go first.
- authenticated: at most `max_per_client` per address; past it, 4031.

Over the whole process at most `max_total` sockets are open; when full, the oldest waiting
socket anywhere makes room, and only when every socket is authenticated is a newcomer
turned away.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from hub.flag import Flag


class Ticket:
    """One WebSocket's place, from accept to close."""

    __slots__ = ("evicted", "host", "state")

    def __init__(self, host: str) -> None:
        self.host = host
        self.state: Literal["waiting", "authenticated", "released"] = "waiting"
        # Set when a newer socket took this waiting one's place: its handshake gives up.
        self.evicted = Flag()

    # Called by `Admission`, which keeps the counts: use its `authenticate` and `release`.
    def mark_authenticated(self) -> None:
        self.state = "authenticated"

    def mark_released(self) -> None:
        self.state = "released"

    def evict(self) -> None:
        """A newer socket took this place (already released): tell its handshake to give up."""
        self.evicted.set()


class Admission:
    def __init__(self, max_total: int, max_per_client: int, max_waiting_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.max_waiting_per_client = max_waiting_per_client
        self.total = 0
        self.authenticated: Counter[str] = Counter()
        # Waiting sockets, oldest first (dicts keep insertion order): all, and per address.
        self._waiting: dict[Ticket, None] = {}
        self._waiting_by_host: dict[str, dict[Ticket, None]] = {}

    def admit(self, host: str) -> Ticket | None:
        """A place for a new socket, or None when every place is held by an authenticated one."""
        if self.total >= self.max_total and not self._evict_oldest(self._waiting):
            return None
        same_host = self._waiting_by_host.setdefault(host, {})
        if len(same_host) >= self.max_waiting_per_client:
            self._evict_oldest(same_host)
        ticket = Ticket(host)
        self._waiting[ticket] = None
        same_host[ticket] = None
        self.total += 1
        return ticket

    def authenticate(self, ticket: Ticket) -> bool:
        """The socket said a valid `hello`: count it against its address's bound. False when
        that address already holds its maximum (the ticket stays waiting until released)."""
        if self.authenticated[ticket.host] >= self.max_per_client:
            return False
        self._forget_waiting(ticket)
        self.authenticated[ticket.host] += 1
        ticket.mark_authenticated()
        return True

    def release(self, ticket: Ticket) -> None:
        """The socket closed (once per ticket; an evicted one was released when evicted)."""
        if ticket.state == "released":
            return
        if ticket.state == "authenticated":
            self.authenticated[ticket.host] -= 1
            if not self.authenticated[ticket.host]:
                del self.authenticated[ticket.host]
        else:
            self._forget_waiting(ticket)
        ticket.mark_released()
        self.total -= 1

    def _evict_oldest(self, waiting: dict[Ticket, None]) -> bool:
        """Free the place of the oldest socket in `waiting`; its handshake sees `evicted`
        and closes it. False if there is none."""
        oldest = next(iter(waiting), None)
        if oldest is None:
            return False
        self.release(oldest)
        oldest.evict()
        return True

    def _forget_waiting(self, ticket: Ticket) -> None:
        self._waiting.pop(ticket, None)
        same_host = self._waiting_by_host.get(ticket.host)
        if same_host is not None:
            same_host.pop(ticket, None)
            if not same_host:
                del self._waiting_by_host[ticket.host]
