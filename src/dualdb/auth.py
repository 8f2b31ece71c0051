"""Supabase access tokens: verification, and the Postgres settings that make RLS apply.

:class:`TokenVerifier` checks a user's access token (a JWT issued by Supabase Auth) the way
Supabase's own API does, and returns typed :class:`Claims`:

* the signature — HS256 with the project's legacy JWT secret (``SUPABASE_JWT_SECRET``), or
  ES256/RS256 with a public key from the project's JWKS
  (``SUPABASE_URL`` + ``/auth/v1/.well-known/jwks.json``, see :class:`JwksSource`);
* the algorithm against a fixed allow-list (:data:`ALGORITHMS`): the token header only says
  which of *our* algorithms it claims, never which algorithm we run — ``none`` is refused, an
  HS256 token is never checked against a JWKS public key, a JWKS key is only used for the
  algorithm its own type implies;
* ``aud`` (``authenticated``), ``exp`` (required), ``sub`` (a user UUID) and, when
  ``SUPABASE_URL`` is known, ``iss`` (``SUPABASE_URL/auth/v1``).

Every failure is :class:`~dualdb.errors.PermissionDenied` with a short reason.  Messages and
``repr()`` never contain the token, the JWT secret or key material.

:func:`act_as_user` and :func:`act_as_service` (re-exported from
:mod:`dualdb.backends.postgres`, which owns the Postgres session) put an open Postgres
transaction into the state PostgREST uses (``request.jwt.claims`` and ``SET LOCAL ROLE``), so
the Row Level Security policies of migration 0004 apply.  Both are transaction-scoped, hence
safe behind Supabase's transaction pooler.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from pydantic import SecretStr

from dualdb.backends.postgres import act_as_service, act_as_user
from dualdb.claims import AUDIENCE, AUTHENTICATED_ROLE, SERVICE_ROLE, Claims
from dualdb.config import Settings, load_settings
from dualdb.errors import ConfigError, PermissionDenied

__all__ = [
    "ALGORITHMS",
    "AUDIENCE",
    "AUTHENTICATED_ROLE",
    "SERVICE_ROLE",
    "Claims",
    "JwksSource",
    "TokenVerifier",
    "act_as_service",
    "act_as_user",
    "jwks_url",
    "project_issuer",
]

#: The only algorithms ever used to verify a token (HS256 only when a JWT secret is set).
ALGORITHMS: tuple[str, ...] = ("HS256", "ES256", "RS256")
_ASYMMETRIC = frozenset({"ES256", "RS256"})
#: Seconds of clock skew tolerated on ``exp``/``iat``/``nbf``.
DEFAULT_LEEWAY_S = 10.0
#: Longer inputs are refused before any parsing.
MAX_TOKEN_LENGTH = 16_384


def project_issuer(supabase_url: str) -> str:
    """The ``iss`` Supabase Auth writes into tokens of the project at ``supabase_url``."""
    return supabase_url.strip().rstrip("/") + "/auth/v1"


def jwks_url(supabase_url: str) -> str:
    """Where the project at ``supabase_url`` publishes its signing keys."""
    return project_issuer(supabase_url) + "/.well-known/jwks.json"


def _shown(value: object) -> str:
    """A short, printable rendering of an attacker-controlled header value."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Client(jwt.PyJWKClient):
    """PyJWT's JWKS client, noting when it last asked the endpoint and how often it got a set.

    ``fetch_data`` is the one method PyJWKClient calls for every request (first load, TTL
    expiry, ``refresh=True``), so this sees them all, failed ones included.
    """

    def __init__(self, url: str, *, lifespan: float, timeout: float) -> None:
        super().__init__(
            url,
            cache_jwk_set=True,
            lifespan=lifespan,
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": "dualdb"},
        )
        self.asked_at: float | None = None
        self.fetches = 0

    def fetch_data(self) -> Any:
        self.asked_at = time.monotonic()
        data = super().fetch_data()
        self.fetches += 1
        return data


class JwksSource:
    """A project's JSON Web Key Set: loaded lazily, cached, refetched for an unknown ``kid``,
    and served from the last good copy while the key endpoint is down.

    ``source`` is a URL (``https://…`` or ``http://…``), a file path, or the JWKS as a dict.

    * A URL is fetched and cached by PyJWT's :class:`jwt.PyJWKClient` (``lifespan`` =
      ``cache_ttl`` seconds).  A file or a dict is read on first use and again after
      ``cache_ttl`` seconds.
    * A token whose ``kid`` is not in the set makes one refetch (key rotation), but only when
      the source was last asked at least ``min_refetch_interval`` seconds ago, so a stream of
      made-up ``kid`` values cannot turn into a stream of requests.  (PyJWT 2.14 added a similar
      ``cooldown_duration``, but only to ``get_signing_key``, which drops keys without a
      ``kid``, and it only counts *successful* fetches; 2.13 has none — hence this one.)
    * When a fetch fails (the endpoint is down, answers 500 or garbage) and a set was loaded
      before, that last good set keeps being used, and the source is not asked again for
      ``min_refetch_interval`` seconds: an outage costs one request per interval, not one per
      token.  PyJWKClient itself fails closed once its TTL has passed.  Only a source that
      has never given a set makes verification fail.
    * Symmetric (``oct``) keys are ignored — HS256 only ever uses the configured JWT secret —
      and so is every key whose type implies an algorithm outside ES256/RS256.

    PyJWKClient reads the whole response (no size cap) with ``timeout`` per socket operation.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Mapping[str, Any],
        *,
        cache_ttl: float = 600.0,
        min_refetch_interval: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        if not cache_ttl > 0:
            raise ValueError("cache_ttl must be more than 0 seconds")
        if not min_refetch_interval >= 0:
            raise ValueError("min_refetch_interval must be 0 seconds or more")
        self._source = source
        self.cache_ttl = cache_ttl
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client = (
            _Client(source, lifespan=cache_ttl, timeout=timeout)
            if isinstance(source, str) and source.lower().startswith(("https://", "http://"))
            else None
        )
        # A file or a dict: PyJWKClient fetches http(s) only, so these are re-read here,
        # after cache_ttl or for an unknown kid, like a URL.
        self._local: jwt.PyJWKSet | None = None
        self._local_asked_at: float | None = None
        self._local_loaded_at = 0.0
        self._local_loads = 0
        #: The keys of the last set that loaded: what is served while the source fails.
        self._keys: tuple[jwt.PyJWK, ...] | None = None
        self._failed_at: float | None = None

    @classmethod
    def for_project(cls, supabase_url: str, **options: Any) -> JwksSource:
        """The JWKS of the Supabase project at ``supabase_url``."""
        return cls(jwks_url(supabase_url), **options)

    @property
    def where(self) -> str:
        """Where the keys come from (a URL, a path, or ``<dict>``) — public information."""
        if isinstance(self._source, Mapping):
            return "<dict>"
        return os.fspath(self._source)

    @property
    def loads(self) -> int:
        """How many times a set was (re)loaded — visible so caching can be verified."""
        return self._client.fetches if self._client is not None else self._local_loads

    def __repr__(self) -> str:
        return f"JwksSource({self.where!r})"

    def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        """The public key ``kid`` for ``algorithm``; :class:`PermissionDenied` if there is none."""
        with self._lock:
            found = _find(self._current(refresh=False), kid, algorithm)
            if found is None and self._may_refetch():
                # The keys may have been rotated since the last load.
                found = _find(self._current(refresh=True), kid, algorithm)
        if found is None:
            if kid is None:
                raise PermissionDenied("token has no key id (kid) and no single key matches")
            raise PermissionDenied(f"token key id {_shown(kid)} is not in the project's JWKS")
        if found.algorithm_name != algorithm:
            raise PermissionDenied(f"token key id {_shown(kid)} is not an {algorithm} key")
        return found

    def _may_refetch(self) -> bool:
        asked = self._client.asked_at if self._client is not None else self._local_asked_at
        return asked is None or time.monotonic() - asked >= self.min_refetch_interval

    def _current(self, *, refresh: bool) -> tuple[jwt.PyJWK, ...]:
        """The usable keys: from the source, or the last good ones while the source fails."""
        if (
            self._keys is not None
            and self._failed_at is not None
            and time.monotonic() - self._failed_at < self.min_refetch_interval
        ):
            return self._keys  # the source failed a moment ago: do not ask it again yet
        try:
            jwk_set = self._load(refresh=refresh)
        except PermissionDenied:
            if self._keys is None:
                raise
            self._failed_at = time.monotonic()
            return self._keys
        self._failed_at = None
        self._keys = tuple(
            key
            for key in jwk_set.keys
            if key.algorithm_name in _ASYMMETRIC and key.public_key_use in (None, "sig")
        )
        return self._keys

    def _load(self, *, refresh: bool) -> jwt.PyJWKSet:
        if self._client is not None:
            return self._fetch(self._client, refresh=refresh)
        now = time.monotonic()
        if self._local is None or refresh or now - self._local_loaded_at >= self.cache_ttl:
            self._local_asked_at = now
            self._local = _key_set(self._read_local(), self.where)
            self._local_loaded_at = time.monotonic()
            self._local_loads += 1
        return self._local

    def _fetch(self, client: _Client, *, refresh: bool) -> jwt.PyJWKSet:
        url = client.uri
        try:
            # PyJWKClient answers from its cache until ``lifespan`` has passed, and keeps
            # that cached set when a fetch fails (PyJWT >= 2.13).
            return client.get_jwk_set(refresh=refresh)
        except jwt.PyJWKClientConnectionError as err:
            cause = err.__cause__
            reason = getattr(cause, "reason", None) or type(cause or err).__name__
            raise PermissionDenied(f"cannot load the signing keys from {url}: {reason}") from None
        except (OSError, http.client.HTTPException) as err:
            # A connection dropped mid-response: PyJWT < 2.15 lets some of these through.
            raise PermissionDenied(
                f"cannot load the signing keys from {url}: {type(err).__name__}"
            ) from None
        except ValueError:
            raise PermissionDenied(f"the signing keys at {url} are not JSON") from None
        except (jwt.PyJWTError, TypeError, AttributeError, NotImplementedError):
            # PyJWKSet refuses a whole set over one malformed entry with any of these.
            raise PermissionDenied(f"{url} is not a JSON Web Key Set") from None

    def _read_local(self) -> Any:
        if isinstance(self._source, Mapping):
            return self._source
        try:
            body = Path(os.fspath(self._source)).read_bytes()
        except OSError as err:
            raise PermissionDenied(
                f"cannot load the signing keys from {self.where}: {err.strerror}"
            ) from None
        try:
            return json.loads(body)
        except ValueError:
            raise PermissionDenied(f"the signing keys at {self.where} are not JSON") from None


def _key_set(data: Any, where: str) -> jwt.PyJWKSet:
    """A file's or a dict's JWKS, parsed by PyJWT as PyJWKClient parses a fetched one."""
    entries = data.get("keys") if isinstance(data, Mapping) else None
    if isinstance(entries, list):
        try:
            return jwt.PyJWKSet([dict(e) for e in entries if isinstance(e, Mapping)])
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError, NotImplementedError):
            pass
    raise PermissionDenied(f"{where} is not a JSON Web Key Set")


def _find(keys: tuple[jwt.PyJWK, ...], kid: str | None, algorithm: str) -> jwt.PyJWK | None:
    if kid is not None:
        return next((k for k in keys if k.key_id == kid), None)
    matching = [k for k in keys if k.algorithm_name == algorithm]
    return matching[0] if len(matching) == 1 else None


# Order matters: subclasses before their bases.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidAudienceError, f"token audience is not {AUDIENCE!r}"),
    (jwt.InvalidIssuerError, "token was not issued by this project"),
    (jwt.InvalidIssuedAtError, "token issue time (iat) is invalid"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted"),
    (jwt.InvalidKeyError, "the verification key cannot be used"),
    (jwt.DecodeError, "token is malformed"),
)


def _reason(err: jwt.PyJWTError) -> str:
    if isinstance(err, jwt.MissingRequiredClaimError):
        return f"token has no {err.claim!r} claim"
    for kind, reason in _REASONS:
        if isinstance(err, kind):
            return reason
    return "token is invalid"


class TokenVerifier:
    """Verifies Supabase access tokens; see the module docstring for what is checked.

    Build it from the environment with :meth:`from_settings`, or explicitly (tests, several
    projects).  At least one of ``jwt_secret`` (HS256) and ``jwks`` (ES256/RS256) is needed.
    ``issuer`` defaults to none (not checked) unless built from ``SUPABASE_URL``.
    """

    def __init__(
        self,
        *,
        jwt_secret: str | SecretStr | None = None,
        jwks: JwksSource | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        issuer: str | None = None,
        audience: str = AUDIENCE,
        leeway: float = DEFAULT_LEEWAY_S,
    ) -> None:
        secret = jwt_secret.get_secret_value() if isinstance(jwt_secret, SecretStr) else jwt_secret
        self._secret = SecretStr(secret) if secret else None
        self._jwks = jwks if isinstance(jwks, JwksSource) or jwks is None else JwksSource(jwks)
        if self._secret is None and self._jwks is None:
            raise ConfigError(
                "verifying access tokens needs SUPABASE_URL (for the project's JWKS) "
                "or SUPABASE_JWT_SECRET"
            )
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> TokenVerifier:
        """A verifier for the project in ``SUPABASE_URL`` / ``SUPABASE_JWT_SECRET``."""
        s = settings if settings is not None else load_settings()
        url = (s.supabase_url or "").strip()
        return cls(
            jwt_secret=s.supabase_jwt_secret,
            jwks=JwksSource.for_project(url) if url else None,
            issuer=project_issuer(url) if url else None,
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms this verifier accepts (a subset of :data:`ALGORITHMS`)."""
        return tuple(
            a
            for a in ALGORITHMS
            if (a == "HS256" and self._secret is not None)
            or (a in _ASYMMETRIC and self._jwks is not None)
        )

    def __repr__(self) -> str:
        secret = "'**********'" if self._secret is not None else None
        return (
            f"TokenVerifier(algorithms={list(self.algorithms)!r}, audience={self.audience!r}, "
            f"issuer={self.issuer!r}, jwt_secret={secret}, jwks={self._jwks!r})"
        )

    def verify(self, token: str) -> Claims:
        """Verify ``token`` (optionally prefixed ``Bearer ``) and return its :class:`Claims`.

        Raises :class:`PermissionDenied` with the reason when anything is wrong.
        """
        if not isinstance(token, str):
            raise PermissionDenied("access token must be a string")
        text = token.strip()
        if text[:7].lower() == "bearer ":
            text = text[7:].strip()
        if not text:
            raise PermissionDenied("no access token given")
        if len(text) > MAX_TOKEN_LENGTH:
            raise PermissionDenied("access token is too long")
        try:
            header = jwt.get_unverified_header(text)
        except jwt.PyJWTError:
            raise PermissionDenied("token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise PermissionDenied(f"token algorithm {_shown(alg)} is not accepted")
        key: Any
        if alg == "HS256":
            if self._secret is None:
                raise PermissionDenied("HS256 tokens are not accepted: no JWT secret is set")
            key = self._secret.get_secret_value()
        else:
            if self._jwks is None:
                raise PermissionDenied(f"{alg} tokens are not accepted: no JWKS is configured")
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise PermissionDenied("token key id (kid) is not a string")
            key = self._jwks.key_for(kid, alg).key
        required = ["exp", "sub", "aud"] + (["iss"] if self.issuer else [])
        try:
            payload = jwt.decode(
                text,
                key,
                algorithms=[alg],  # exactly one, chosen above from our own list
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.PyJWTError as err:
            raise PermissionDenied(_reason(err)) from None
        return _claims(payload)


def _claims(payload: dict[str, Any]) -> Claims:
    try:
        user_id = uuid.UUID(str(payload["sub"]))
    except ValueError:
        raise PermissionDenied("token subject (sub) is not a user id") from None
    role = payload.get("role", AUTHENTICATED_ROLE)
    if role != AUTHENTICATED_ROLE:
        raise PermissionDenied(f"token role {_shown(role)} is not {AUTHENTICATED_ROLE!r}")
    email = payload.get("email")
    try:
        expires_at = datetime.fromtimestamp(float(payload["exp"]), tz=UTC)
    except (ValueError, OverflowError, OSError, TypeError):
        raise PermissionDenied("token expiry is invalid") from None
    return Claims(
        user_id=user_id,
        role=AUTHENTICATED_ROLE,
        email=email if isinstance(email, str) and email else None,
        expires_at=expires_at,
        raw=MappingProxyType(dict(payload)),
    )
