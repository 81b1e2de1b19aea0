"""Identity-provider tokens and their audience (HUB_AUTH_AUDIENCE)."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hub.auth import AuthError, TokenService


def idp() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "dr-who", "role": "therapist", "exp": int(time.time()) + 600, **extra}


def test_audience_is_required_when_configured() -> None:
    key, pem = idp()
    hub = TokenService(b"s" * 32, pem, audience="mirror-hub")
    ok = jwt.encode(claims(aud="mirror-hub"), key, algorithm="RS256")
    assert hub.verify(ok).role == "therapist"
    # Said in the hub's words, not the JWT library's.
    for bad, reason in (
        (claims(aud="payroll-app"), "token is for another audience"),
        (claims(), "token lacks the `aud` claim"),
    ):
        with pytest.raises(AuthError, match=reason):
            hub.verify(jwt.encode(bad, key, algorithm="RS256"))
    # The hub's own HS256 tokens are not identity-provider tokens: no audience needed.
    assert hub.verify(hub.issue("admin", "ops", 60)).role == "admin"


def test_without_audience_any_aud_is_accepted() -> None:
    key, pem = idp()
    hub = TokenService(b"s" * 32, pem)
    assert hub.verify(jwt.encode(claims(aud="payroll-app"), key, algorithm="RS256"))
