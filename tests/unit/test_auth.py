"""Access-token verification with real keys and real JWTs (no mocks).

Keys are generated here; JWKS documents are served from a dict, a file, or a local HTTP server
on 127.0.0.1.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from dualdb.auth import Claims, JwksSource, TokenVerifier, jwks_url, project_issuer
from dualdb.config import Settings
from dualdb.errors import ConfigError, PermissionDenied

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long-and-then-some"
PROJECT = "https://abcdefghijklmnop.supabase.co"
ISSUER = f"{PROJECT}/auth/v1"
USER = uuid.UUID("0b9d1c2e-3f4a-4b5c-8d6e-7f8091a2b3c4")


@dataclasses.dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ec_new: ec.EllipticCurvePrivateKey

    def jwk(self, key: Any, kid: str) -> dict[str, Any]:
        public = key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
            data["alg"] = "RS256"
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
            data["alg"] = "ES256"
        return {**data, "kid": kid, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk(self.rsa, "rsa-1"), self.jwk(self.ec, "ec-1")]}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ec_new=ec.generate_private_key(ec.SECP256R1()),
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": str(USER),
        "aud": "authenticated",
        "role": "authenticated",
        "email": "a@example.com",
        "iss": ISSUER,
        "iat": now,
        "exp": now + 3600,
        "session_id": "s-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any, alg: str, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token PyJWT would refuse to produce (``alg: none``, a PEM used as an HMAC secret)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if hmac_key is None:
        return signing_input + "."
    mac = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def verifier(keys: Keys) -> TokenVerifier:
    return TokenVerifier(jwt_secret=SECRET, jwks=keys.jwks(), issuer=ISSUER)


def denied(v: TokenVerifier, token: Any, match: str) -> PermissionDenied:
    with pytest.raises(PermissionDenied, match=match) as caught:
        v.verify(token)
    err = caught.value
    shown = f"{err} {err!r}"
    assert SECRET not in shown
    assert "\n" not in str(err) and len(str(err)) < 200  # one short line
    if isinstance(token, str) and len(token) > 8:
        # Neither the token nor any of its segments is echoed back.
        for segment in token.split("."):
            assert len(segment) < 8 or segment not in shown
    # No chained driver exception (with its own message) rides along into logs.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return err


# --- accepted tokens ------------------------------------------------------------------------


def test_hs256_token_gives_typed_frozen_claims(verifier: TokenVerifier) -> None:
    c = verifier.verify(sign(claims(), SECRET, "HS256"))
    assert (c.user_id, c.role, c.email) == (USER, "authenticated", "a@example.com")
    assert isinstance(c.user_id, uuid.UUID)
    assert c.expires_at is not None and c.expires_at.tzinfo is UTC
    assert abs((c.expires_at - datetime.now(UTC)).total_seconds() - 3600) < 60
    assert c.raw["session_id"] == "s-1" and c.raw["iss"] == ISSUER
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.role = "service_role"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.raw["sub"] = "someone else"  # type: ignore[index]
    assert json.loads(c.to_json()) == dict(c.raw)


def test_bearer_prefix_is_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify("Bearer " + sign(claims(), SECRET, "HS256")).user_id == USER


def test_es256_and_rs256_tokens_verify_against_the_jwks(
    verifier: TokenVerifier, keys: Keys
) -> None:
    assert verifier.verify(sign(claims(), keys.ec, "ES256", "ec-1")).user_id == USER
    assert verifier.verify(sign(claims(), keys.rsa, "RS256", "rsa-1")).user_id == USER


def test_jwks_from_a_file(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    v = TokenVerifier(jwks=path, issuer=ISSUER)
    assert v.verify(sign(claims(), keys.rsa, "RS256", "rsa-1")).email == "a@example.com"
    assert v.algorithms == ("ES256", "RS256")


def test_a_token_without_kid_uses_the_only_key_of_its_type(keys: Keys) -> None:
    v = TokenVerifier(jwks={"keys": [keys.jwk(keys.ec, "only")]})
    assert v.verify(sign(claims(), keys.ec, "ES256")).user_id == USER
    two = TokenVerifier(jwks={"keys": [keys.jwk(keys.ec, "a"), keys.jwk(keys.ec_new, "b")]})
    denied(two, sign(claims(), keys.ec, "ES256"), "no key id")


# --- JWKS over HTTP: cached, refetched on an unknown kid ------------------------------------


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 that counts its requests.

    ``status`` other than 200 makes it answer that error; ``garbage`` makes it answer 200 with
    a body that is not JSON.
    """

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.hits = 0
        self.status = 200
        self.garbage = False
        self.closed = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                if self.path != "/auth/v1/.well-known/jwks.json":
                    self.send_error(404)
                    return
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                body = b"<html>oops" if outer.garbage else json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.project_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits up to one interval for the loop to notice.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[JwksServer]:
    server = JwksServer(keys.jwks())
    try:
        yield server
    finally:
        server.close()


def test_jwks_url_is_fetched_once_and_cached(keys: Keys, jwks_server: JwksServer) -> None:
    v = TokenVerifier(jwks=JwksSource.for_project(jwks_server.project_url))
    for _ in range(3):
        v.verify(sign(claims(), keys.ec, "ES256", "ec-1"))
        v.verify(sign(claims(), keys.rsa, "RS256", "rsa-1"))
    assert jwks_server.hits == 1


def test_an_unknown_kid_refetches_once_to_pick_up_a_rotated_key(
    keys: Keys, jwks_server: JwksServer
) -> None:
    source = JwksSource.for_project(jwks_server.project_url, min_refetch_interval=0)
    v = TokenVerifier(jwks=source)
    v.verify(sign(claims(), keys.ec, "ES256", "ec-1"))
    assert jwks_server.hits == 1
    jwks_server.jwks = {"keys": [keys.jwk(keys.ec_new, "ec-2")]}  # the project rotated
    assert v.verify(sign(claims(), keys.ec_new, "ES256", "ec-2")).user_id == USER
    assert jwks_server.hits == 2
    # A kid that is still unknown after the refetch is refused (after one more fetch only).
    denied(v, sign(claims(), keys.ec, "ES256", "ec-9"), "not in the project's JWKS")
    assert jwks_server.hits == 3


def test_unknown_kids_cannot_force_a_fetch_per_token(keys: Keys, jwks_server: JwksServer) -> None:
    v = TokenVerifier(jwks=JwksSource.for_project(jwks_server.project_url))
    for i in range(5):
        denied(v, sign(claims(), keys.ec, "ES256", f"made-up-{i}"), "not in the project's JWKS")
    assert jwks_server.hits == 1  # within min_refetch_interval: no refetch


# --- JWKS over HTTP: key rotation and outages -----------------------------------------------
#
# PyJWKClient times its cache with time.monotonic() and takes no clock to inject, so these
# tests give the source a TTL (or refetch interval) of a few hundredths of a second and wait
# it out with wait_past(): it waits until the monotonic clock itself is past the deadline, so
# "the TTL has passed" is certain rather than hoped for; no test waits on another thread.

SHORT = 0.05


def wait_past(deadline: float) -> None:
    """Return once ``time.monotonic()`` is past ``deadline``."""
    while (left := deadline - time.monotonic()) >= 0:
        time.sleep(left + 0.001)


def outage(server: JwksServer, kind: str) -> None:
    if kind == "stopped":
        server.close()  # nothing listens on the port any more: connection refused
    elif kind == "garbage":
        server.garbage = True
    else:
        server.status = 500


@pytest.mark.parametrize("kind", ["stopped", "500", "garbage"])
def test_a_cached_key_still_verifies_after_the_ttl_while_the_endpoint_is_down(
    keys: Keys, jwks_server: JwksServer, kind: str
) -> None:
    source = JwksSource.for_project(jwks_server.project_url, cache_ttl=SHORT)
    v = TokenVerifier(jwks=source)
    v.verify(sign(claims(), keys.ec, "ES256", "ec-1"))
    fetched = time.monotonic()
    assert jwks_server.hits == 1
    outage(jwks_server, kind)
    wait_past(fetched + SHORT)  # the cached set has expired
    for _ in range(3):
        assert v.verify(sign(claims(), keys.ec, "ES256", "ec-1")).user_id == USER
        assert v.verify(sign(claims(), keys.rsa, "RS256", "rsa-1")).user_id == USER
    # The endpoint was asked once after the TTL; the failure holds further requests back
    # for min_refetch_interval (30 s), so an outage is not a request per token.
    assert jwks_server.hits == (1 if kind == "stopped" else 2)
    assert source.loads == 1
    # Forged tokens and unknown kids are still refused while the endpoint is down.
    denied(v, sign(claims(), keys.rsa_other, "RS256", "rsa-1"), "signature is invalid")
    err = denied(v, sign(claims(), keys.ec_new, "ES256", "ec-2"), "not in the project's JWKS")
    assert str(err) == "token key id 'ec-2' is not in the project's JWKS"
    assert jwks_server.hits == (1 if kind == "stopped" else 2)


def test_a_failed_refetch_keeps_the_cached_set(keys: Keys, jwks_server: JwksServer) -> None:
    """An unknown kid during an outage does not empty the cache (PyJWT >= 2.13 keeps it)."""
    source = JwksSource.for_project(jwks_server.project_url, min_refetch_interval=0)
    v = TokenVerifier(jwks=source)
    v.verify(sign(claims(), keys.ec, "ES256", "ec-1"))
    jwks_server.status = 500
    for i in range(2):
        denied(v, sign(claims(), keys.ec, "ES256", f"new-{i}"), "not in the project's JWKS")
    assert jwks_server.hits == 3  # one refetch per unknown kid (the interval is 0 here)
    for _ in range(3):
        assert v.verify(sign(claims(), keys.ec, "ES256", "ec-1")).user_id == USER
    assert jwks_server.hits == 3  # still inside the TTL: served from the cache, no request
    jwks_server.status = 200
    jwks_server.jwks = {"keys": [keys.jwk(keys.ec_new, "ec-2")]}  # back, and rotated
    assert v.verify(sign(claims(), keys.ec_new, "ES256", "ec-2")).user_id == USER
    assert jwks_server.hits == 4


def test_after_the_ttl_the_published_set_replaces_the_cached_one(
    keys: Keys, jwks_server: JwksServer
) -> None:
    source = JwksSource.for_project(jwks_server.project_url, cache_ttl=SHORT)
    v = TokenVerifier(jwks=source)
    v.verify(sign(claims(), keys.ec, "ES256", "ec-1"))
    fetched = time.monotonic()
    jwks_server.jwks = {"keys": [keys.jwk(keys.ec_new, "ec-2")]}  # rotated: ec-1 withdrawn
    wait_past(fetched + SHORT)
    assert v.verify(sign(claims(), keys.ec_new, "ES256", "ec-2")).user_id == USER
    assert jwks_server.hits == 2
    # A withdrawn key stops working once the new set is in; its kid is unknown now, and it
    # makes no request (the set was fetched less than min_refetch_interval ago).
    denied(v, sign(claims(), keys.ec, "ES256", "ec-1"), "not in the project's JWKS")
    assert jwks_server.hits == 2


def test_a_new_kid_is_picked_up_once_the_refetch_interval_has_passed(
    keys: Keys, jwks_server: JwksServer
) -> None:
    source = JwksSource.for_project(jwks_server.project_url, min_refetch_interval=SHORT)
    v = TokenVerifier(jwks=source)
    v.verify(sign(claims(), keys.ec, "ES256", "ec-1"))
    fetched = time.monotonic()
    jwks_server.jwks = {"keys": [keys.jwk(keys.ec, "ec-1"), keys.jwk(keys.ec_new, "ec-2")]}
    wait_past(fetched + SHORT)
    assert v.verify(sign(claims(), keys.ec_new, "ES256", "ec-2")).user_id == USER
    assert v.verify(sign(claims(), keys.ec, "ES256", "ec-1")).user_id == USER
    assert jwks_server.hits == 2


def test_a_jwks_file_is_reread_after_the_ttl_and_kept_while_unreadable(
    keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    source = JwksSource(path, cache_ttl=SHORT)
    v = TokenVerifier(jwks=source)
    v.verify(sign(claims(), keys.ec, "ES256", "ec-1"))
    read = time.monotonic()
    path.write_text(json.dumps({"keys": [keys.jwk(keys.ec_new, "ec-2")]}))
    wait_past(read + SHORT)
    assert v.verify(sign(claims(), keys.ec_new, "ES256", "ec-2")).user_id == USER
    read = time.monotonic()
    denied(v, sign(claims(), keys.ec, "ES256", "ec-1"), "not in the project's JWKS")
    path.unlink()
    wait_past(read + SHORT)
    assert v.verify(sign(claims(), keys.ec_new, "ES256", "ec-2")).user_id == USER
    assert source.loads == 2


def test_refetch_options_are_checked() -> None:
    with pytest.raises(ValueError, match="cache_ttl"):
        JwksSource("https://example.invalid/jwks.json", cache_ttl=0)
    with pytest.raises(ValueError, match="min_refetch_interval"):
        JwksSource({"keys": []}, min_refetch_interval=-1)


def test_from_settings_uses_supabase_url_for_jwks_and_issuer(
    keys: Keys, jwks_server: JwksServer
) -> None:
    settings = Settings.model_validate({"SUPABASE_URL": jwks_server.project_url + "/"})
    v = TokenVerifier.from_settings(settings)
    assert v.issuer == jwks_server.project_url + "/auth/v1"
    assert v.algorithms == ("ES256", "RS256")
    good = claims(iss=v.issuer)
    assert v.verify(sign(good, keys.ec, "ES256", "ec-1")).user_id == USER
    denied(v, sign(claims(), keys.ec, "ES256", "ec-1"), "not issued by this project")
    denied(v, sign(good, SECRET, "HS256"), "HS256 tokens are not accepted")


def test_from_settings_with_only_the_jwt_secret() -> None:
    v = TokenVerifier.from_settings(Settings.model_validate({"SUPABASE_JWT_SECRET": SECRET}))
    assert v.algorithms == ("HS256",) and v.issuer is None
    assert v.verify(sign(claims(iss=None), SECRET, "HS256")).user_id == USER


def test_from_settings_without_either_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"SUPABASE_URL .* or SUPABASE_JWT_SECRET"):
        TokenVerifier.from_settings(Settings.model_validate({}))


def test_project_urls() -> None:
    assert project_issuer(PROJECT + "/") == ISSUER
    assert jwks_url(PROJECT) == ISSUER + "/.well-known/jwks.json"


def test_unreachable_or_broken_jwks_is_permission_denied(keys: Keys, tmp_path: Path) -> None:
    token = sign(claims(), keys.ec, "ES256", "ec-1")
    unreachable = TokenVerifier(jwks="http://127.0.0.1:1/auth/v1/.well-known/jwks.json")
    denied(unreachable, token, "cannot load the signing keys")
    (tmp_path / "bad.json").write_text("{not json")
    denied(TokenVerifier(jwks=tmp_path / "bad.json"), token, "not JSON")
    denied(TokenVerifier(jwks=tmp_path / "missing.json"), token, "cannot load the signing keys")
    denied(TokenVerifier(jwks={"nope": []}), token, "not a JSON Web Key Set")


# --- rejected tokens ------------------------------------------------------------------------


def test_forged_signatures_are_rejected(verifier: TokenVerifier, keys: Keys) -> None:
    denied(verifier, sign(claims(), SECRET + "x", "HS256"), "signature is invalid")
    # Signed by someone else's key under the project's kid.
    denied(verifier, sign(claims(), keys.rsa_other, "RS256", "rsa-1"), "signature is invalid")
    # A genuine token with its payload swapped for another user's.
    header, _, signature = sign(claims(), keys.rsa, "RS256", "rsa-1").split(".")
    other = _b64(json.dumps(claims(sub=str(uuid.uuid4()))).encode())
    denied(verifier, f"{header}.{other}.{signature}", "signature is invalid")


def test_expired_and_not_yet_valid_tokens_are_rejected(verifier: TokenVerifier) -> None:
    now = int(time.time())
    denied(verifier, sign(claims(exp=now - 60), SECRET, "HS256"), "token has expired")
    denied(verifier, sign(claims(exp=None), SECRET, "HS256"), "no 'exp' claim")
    denied(verifier, sign(claims(nbf=now + 600), SECRET, "HS256"), "not valid yet")
    # Validly signed, but an expiry no datetime can hold: refused, not a raw ValueError.
    for far in (10**12, 10**20):
        denied(verifier, sign(claims(exp=far), SECRET, "HS256"), "expiry is invalid")


def test_audience_is_checked(verifier: TokenVerifier) -> None:
    denied(verifier, sign(claims(aud="anon"), SECRET, "HS256"), "audience")
    denied(verifier, sign(claims(aud=None), SECRET, "HS256"), "no 'aud' claim")


def test_issuer_is_checked(verifier: TokenVerifier, keys: Keys) -> None:
    other = "https://someone-else.supabase.co/auth/v1"
    denied(verifier, sign(claims(iss=other), keys.ec, "ES256", "ec-1"), "not issued by")
    denied(verifier, sign(claims(iss=None), SECRET, "HS256"), "no 'iss' claim")


def test_subject_and_role_are_checked(verifier: TokenVerifier) -> None:
    denied(verifier, sign(claims(sub="not-a-uuid"), SECRET, "HS256"), "not a user id")
    denied(verifier, sign(claims(sub=None), SECRET, "HS256"), "no 'sub' claim")
    # A service-role JWT is not a user's token.
    denied(verifier, sign(claims(role="service_role"), SECRET, "HS256"), "role")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(verifier: TokenVerifier, alg: str) -> None:
    token = handmade({"alg": alg, "typ": "JWT"}, claims(), None)
    denied(verifier, token, "algorithm .* is not accepted")


@pytest.mark.parametrize(
    ("alg", "key_name", "kid"),
    [("HS512", "secret", None), ("RS512", "rsa", "rsa-1"), ("PS256", "rsa", "rsa-1")],
)
def test_algorithms_outside_the_allow_list_are_rejected(
    verifier: TokenVerifier, keys: Keys, alg: str, key_name: str, kid: str | None
) -> None:
    key = SECRET if key_name == "secret" else keys.rsa
    denied(verifier, sign(claims(), key, alg, kid), "algorithm .* is not accepted")


def test_hs256_signed_with_the_rsa_public_key_is_rejected(keys: Keys) -> None:
    """HS/RS confusion: the public key (which anyone can fetch) used as an HMAC secret."""
    forged = handmade({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(), pem(keys.rsa))
    jwks_only = TokenVerifier(jwks=keys.jwks(), issuer=ISSUER)
    denied(jwks_only, forged, "HS256 tokens are not accepted")
    with_secret = TokenVerifier(jwt_secret=SECRET, jwks=keys.jwks(), issuer=ISSUER)
    denied(with_secret, forged, "signature is invalid")


def test_a_key_is_used_only_for_its_own_algorithm(verifier: TokenVerifier, keys: Keys) -> None:
    # The header claims RS256 but names the EC key.
    denied(verifier, sign(claims(), keys.rsa, "RS256", "ec-1"), "not an RS256 key")


def test_symmetric_keys_in_a_jwks_are_never_used(keys: Keys) -> None:
    """A JWKS is public: an ``oct`` key in it must not become an HMAC secret."""
    sym = {"kty": "oct", "kid": "sym", "k": _b64(SECRET.encode()), "alg": "HS256"}
    v = TokenVerifier(jwks={"keys": [sym, keys.jwk(keys.ec, "ec-1")]})
    denied(v, sign(claims(), SECRET, "HS256", "sym"), "HS256 tokens are not accepted")


def test_unknown_kid_is_rejected(verifier: TokenVerifier, keys: Keys) -> None:
    denied(verifier, sign(claims(), keys.rsa, "RS256", "nobody"), "not in the project's JWKS")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "   ",
        "Bearer ",
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "eyJub3QiOiJqc29uIg.e30.x",
        "🔑.🔑.🔑",
        "x" * 20_000,
    ],
)
def test_garbage_is_rejected(verifier: TokenVerifier, token: str) -> None:
    denied(verifier, token, "token")


@pytest.mark.parametrize("token", [None, b"a.b.c", 42])
def test_non_strings_are_rejected(verifier: TokenVerifier, token: Any) -> None:
    denied(verifier, token, "must be a string")


# --- nothing secret is ever shown -----------------------------------------------------------


def test_repr_never_shows_secrets_or_tokens(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(claims(), SECRET, "HS256")
    c = verifier.verify(token)
    for shown in (repr(verifier), str(verifier), repr(c), str(c)):
        assert SECRET not in shown and token not in shown
        assert token.split(".")[2] not in shown
    assert "jwt_secret='**********'" in repr(verifier)
    assert str(USER) in repr(c)


def test_claims_for_trusted_server_code() -> None:
    c = Claims.for_user_id(str(USER), email="a@example.com")
    assert c.user_id == USER and c.role == "authenticated" and c.expires_at is None
    assert json.loads(c.to_json()) == {
        "sub": str(USER),
        "role": "authenticated",
        "aud": "authenticated",
        "email": "a@example.com",
    }
    with pytest.raises(ValueError):
        Claims.for_user_id("not-a-uuid")
