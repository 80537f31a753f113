"""The cluster credential on its own: what a signature covers, the time window, replays.

The verifier's clock is injected, so the window's edges are tested exactly, without
waiting.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from engine.api.access import Access
from engine.api.auth import Token
from engine.api.cluster import (
    ClusterKey,
    ClusterSecretError,
    PeerAuthError,
    PeerVerifier,
    SignedRequest,
)

SECRET = b"s" * 32
T = 1_800_000_000.0
REQUEST = SignedRequest(
    "POST", "/subscriptions/a/x?api-version=1", b"{}", Access(frozenset({"a"})), "from", "to"
)


def _verifier(now: list[float], **options: Any) -> PeerVerifier:
    return PeerVerifier(ClusterKey(SECRET), "to", now=lambda: now[0], **options)


def _verify(
    verifier: PeerVerifier, headers: dict[str, str], request: SignedRequest = REQUEST
) -> tuple[Access, str]:
    return verifier.verify(request.method, request.target, headers, request.body)


def test_a_signed_request_verifies_once_with_the_access_it_carries() -> None:
    now = [T]
    headers = ClusterKey(SECRET).sign_request(REQUEST, now=T)
    assert _verify(_verifier(now), headers) == (REQUEST.access, "from")
    verifier = _verifier(now)
    _verify(verifier, headers)
    with pytest.raises(PeerAuthError, match="replay"):
        _verify(verifier, headers)


@pytest.mark.parametrize(
    "changed",
    [
        replace(REQUEST, method="PUT"),
        replace(REQUEST, target="/subscriptions/b/x?api-version=1"),
        replace(REQUEST, target="/subscriptions/a/x?api-version=2"),
        replace(REQUEST, body=b'{"a": 1}'),
    ],
    ids=["method", "path", "query", "body"],
)
def test_every_signed_part_of_the_request_counts(changed: SignedRequest) -> None:
    headers = ClusterKey(SECRET).sign_request(REQUEST, now=T)
    with pytest.raises(PeerAuthError, match="signature"):
        _verify(_verifier([T]), headers, changed)


def test_the_carried_access_and_sender_cannot_be_swapped() -> None:
    headers = ClusterKey(SECRET).sign_request(REQUEST, now=T)
    for name, value in [("access", "platform"), ("from", "someone")]:
        with pytest.raises(PeerAuthError, match="signature"):
            _verify(_verifier([T]), headers | {f"x-osupgrade-peer-{name}": value})


def test_the_time_window_holds_on_both_sides() -> None:
    key = ClusterKey(SECRET)
    for sent, ok in [(T - 30, True), (T + 30, True), (T - 30.01, False), (T + 31, False)]:
        headers = key.sign_request(REQUEST, now=sent)
        if ok:
            _verify(_verifier([T], window_s=30), headers)
        else:
            with pytest.raises(PeerAuthError, match="too old or from the future"):
                _verify(_verifier([T], window_s=30), headers)
    with pytest.raises(PeerAuthError, match="too old"):
        _verify(_verifier([T]), key.sign_request(REQUEST, now=T) | {"x-osupgrade-peer-time": "nan"})


def test_a_nonce_is_remembered_as_long_as_its_request_could_verify() -> None:
    now = [T]
    verifier = _verifier(now, window_s=30)
    headers = ClusterKey(SECRET).sign_request(REQUEST, now=T + 30)  # valid until T + 60
    _verify(verifier, headers)
    now[0] = T + 59.9
    with pytest.raises(PeerAuthError, match="replay"):
        _verify(verifier, headers)


def test_nonces_are_bounded_and_only_signed_requests_take_a_place() -> None:
    key = ClusterKey(SECRET)
    verifier = _verifier([T], max_nonces=2)
    forged = key.sign_request(REQUEST, now=T) | {"x-osupgrade-peer-signature": "0" * 64}
    for _ in range(5):
        with pytest.raises(PeerAuthError, match="signature"):
            _verify(verifier, forged)
    _verify(verifier, key.sign_request(REQUEST, now=T))
    _verify(verifier, key.sign_request(REQUEST, now=T))
    with pytest.raises(PeerAuthError, match="too many"):
        _verify(verifier, key.sign_request(REQUEST, now=T))


def test_another_recipient_or_another_secret_does_not_verify() -> None:
    key = ClusterKey(SECRET)
    with pytest.raises(PeerAuthError, match="another server"):
        _verify(_verifier([T]), key.sign_request(replace(REQUEST, recipient="other"), now=T))
    foreign = ClusterKey(b"t" * 32).sign_request(REQUEST, now=T)
    with pytest.raises(PeerAuthError, match="signature"):
        _verify(_verifier([T]), foreign)


def test_announcements_and_requests_use_separate_keys() -> None:
    key = ClusterKey(SECRET)
    url = "http://127.0.0.1:8080"
    mac = key.sign_announcement("to", url)
    assert key.verify_announcement("to", url, mac)
    assert not key.verify_announcement("other", url, mac)
    assert mac not in key.sign_request(REQUEST, now=T).values()


def test_secrets_never_show_in_a_repr() -> None:
    key = ClusterKey(SECRET)
    assert "sss" not in repr(key) and "sss" not in repr([key])
    assert "hunter2" not in repr(Token("hunter2-token", frozenset({"sub"})))
    with pytest.raises(ClusterSecretError, match="at least 32 bytes"):
        ClusterKey(b"s" * 31)
