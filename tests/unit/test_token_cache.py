"""A verified token is remembered until it expires (plus the clock-skew leeway), never past."""

from __future__ import annotations

import uuid

import pytest

from hub import auth
from hub.auth import LEEWAY_S, AuthError, TokenService


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_remembered_token_is_decoded_again_once_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    service = TokenService(b"k" * 32)
    token = service.issue("therapist", "dr", ttl_s=60)
    first = service.verify(token)
    assert service.verify(token) is first  # remembered, not decoded again

    # Past its expiry the hub decodes it again (which then refuses it: see test_auth_*);
    # only the hub's clock moves here, so the decode still accepts it.
    clock = Clock(auth.time.time() + 60 + LEEWAY_S + 1)
    monkeypatch.setattr(auth.time, "time", clock)
    again = service.verify(token)
    assert again == first and again is not first


def test_a_refused_token_is_not_remembered() -> None:
    service = TokenService(b"k" * 32)
    other = TokenService(b"x" * 32).issue("admin", "a", ttl_s=60)
    for _ in range(2):
        with pytest.raises(AuthError, match="signature"):
            service.verify(other)


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_CACHE_SIZE", 3)
    service = TokenService(b"k" * 32)
    tokens = [service.issue("mirror", f"m{i}", 60, uuid.uuid4()) for i in range(5)]
    principals = [service.verify(t) for t in tokens]
    assert service.verify(tokens[4]) is principals[4]  # among the newest three
    assert service.verify(tokens[0]) is not principals[0]  # forgotten first
