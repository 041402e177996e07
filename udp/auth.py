"""Access control: the `auth:` section of config.yml, who a request is, and what they may do.

Users come from the file (a PBKDF2 hash, or a `${VAR}` secret taken from the environment) with roles
`read`, `write` and `admin` (each includes the ones before it); JWTs of an OpenID Connect issuer
(Keycloak, as Hamburg and FROST-Server use) are accepted as Bearer tokens, their roles read from a
claim. Reading is public; writing takes `write`; `read` also sees what is declared `access: internal`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from udp.errors import ConfigError

ROLES = ("read", "write", "admin")
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
_PBKDF2 = "pbkdf2_sha256"
_ITERATIONS = 600_000
INTERNAL_USER = "udp-internal"  # the platform's own MQTT clients on the embedded broker


@dataclass(frozen=True)
class Principal:
    """Who made a request and what they may do."""

    name: str
    roles: frozenset[str]

    def can(self, role: str) -> bool:
        """Whether the principal holds `role` or one above it."""
        rank = ROLES.index(role)
        return any(ROLES.index(r) >= rank for r in self.roles if r in ROLES)


ANONYMOUS = Principal("anonymous", frozenset())


@dataclass(frozen=True)
class User:
    """A user declared in config.yml."""

    name: str
    secret: str  # a pbkdf2_sha256$… hash, or the password itself (from `${VAR}`)
    roles: frozenset[str]


@dataclass(frozen=True)
class Oidc:
    """An OpenID Connect issuer whose access tokens are accepted."""

    issuer: str
    audience: str | None = None
    roles_claim: str = "realm_access.roles"  # a dotted path into the token's claims (Keycloak's realm roles)
    jwks_uri: str | None = None  # found through the issuer's discovery document when not given


@dataclass(frozen=True)
class AuthSpec:
    """The `auth:` section."""

    users: dict[str, User]
    oidc: Oidc | None = None


def parse_auth(doc: Any) -> AuthSpec:
    """The `auth:` mapping; ConfigError names the key path."""
    if not isinstance(doc, dict):
        raise ConfigError("auth: must be a mapping with `users` and/or `oidc`")
    unknown = sorted(set(doc) - {"users", "oidc"})
    if unknown:
        raise ConfigError(f"auth.{unknown[0]}: unknown key (known: oidc, users)")
    users: dict[str, User] = {}
    for i, entry in enumerate(doc.get("users") or []):
        where = f"auth.users[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with name, password and roles")
        bad = sorted(set(entry) - {"name", "password", "roles"})
        if bad:
            raise ConfigError(f"{where}.{bad[0]}: unknown key (known: name, password, roles)")
        name, password, roles = entry.get("name"), entry.get("password"), entry.get("roles", ["read"])
        if not isinstance(name, str) or not name or name == INTERNAL_USER:
            raise ConfigError(f"{where}.name: a user name is required (and {INTERNAL_USER!r} is the platform's own)")
        if not isinstance(password, str) or len(password) < 8:
            raise ConfigError(f"{where}.password: at least 8 characters, or a hash from `udp hash-password` "
                            "(use ${VAR} to keep it out of the file)")
        if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
            raise ConfigError(f"{where}.roles: a list of {', '.join(ROLES)}")
        if name in users:
            raise ConfigError(f"{where}.name: {name!r} is declared twice")
        users[name] = User(name, password, frozenset(roles))
    oidc = None
    if doc.get("oidc") is not None:
        o = doc["oidc"]
        if not isinstance(o, dict) or not isinstance(o.get("issuer"), str):
            raise ConfigError("auth.oidc.issuer: the issuer URL is required (https://id.example.org/realms/city)")
        bad = sorted(set(o) - {"issuer", "audience", "roles_claim", "jwks_uri"})
        if bad:
            raise ConfigError(f"auth.oidc.{bad[0]}: unknown key (known: audience, issuer, jwks_uri, roles_claim)")
        oidc = Oidc(o["issuer"].rstrip("/"), o.get("audience"), o.get("roles_claim", "realm_access.roles"),
                    o.get("jwks_uri"))
    if not users and oidc is None:
        raise ConfigError("auth: declare `users` or `oidc` (without `auth:` the platform runs open)")
    return AuthSpec(users, oidc)


def hash_password(password: str, iterations: int = _ITERATIONS) -> str:
    """A PBKDF2-SHA256 hash to put in config.yml instead of the password."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{_PBKDF2}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(secret: str, given: str) -> bool:
    """Whether `given` matches a stored hash or secret (in constant time)."""
    if secret.startswith(_PBKDF2 + "$"):
        try:
            _, rounds, salt, digest = secret.split("$")
            expected = base64.b64decode(digest)
            got = hashlib.pbkdf2_hmac("sha256", given.encode(), base64.b64decode(salt), int(rounds))
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(expected, got)
    return hmac.compare_digest(secret.encode(), given.encode())


class AuthError(Exception):
    """Credentials that are not accepted; the message says why."""


class Authenticator:
    """Turns credentials into principals; remembers verified passwords briefly (PBKDF2 is slow on purpose)."""

    def __init__(self, spec: AuthSpec, internal_secret: str | None = None) -> None:
        self.spec = spec
        self.internal_secret = internal_secret or os.environ.get("UDP_INTERNAL_SECRET") or secrets.token_urlsafe(24)
        self._jwks: Any = None
        self._verified: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def password(self, name: str, password: str) -> Principal | None:
        """The principal of a user name and password, None when they do not match."""
        if name == INTERNAL_USER:
            ok = hmac.compare_digest(self.internal_secret.encode(), password.encode())
            return Principal(INTERNAL_USER, frozenset({"admin"})) if ok else None
        user = self.spec.users.get(name)
        if user is None:
            return None
        key = (name, hashlib.sha256(password.encode()).hexdigest())
        with self._lock:
            if self._verified.get(key, 0) > time.monotonic():
                return Principal(name, user.roles)
        if not verify_password(user.secret, password):
            return None
        with self._lock:
            self._verified[key] = time.monotonic() + 300
        return Principal(name, user.roles)

    def token(self, token: str) -> Principal:
        """The principal of an OpenID Connect access token (AuthError with the reason)."""
        import jwt

        oidc = self.spec.oidc
        if oidc is None:
            raise AuthError("Bearer tokens are not accepted here (no auth.oidc issuer)")
        try:
            key = self._jwks_client().get_signing_key_from_jwt(token).key
            claims = jwt.decode(token, key, algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],
                                audience=oidc.audience, issuer=oidc.issuer,
                                options={"verify_aud": oidc.audience is not None, "require": ["exp", "iss"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"token refused: {exc}") from None
        roles: Any = claims
        for part in oidc.roles_claim.split("."):
            roles = roles.get(part) if isinstance(roles, dict) else None
        granted = frozenset(r for r in (roles or []) if r in ROLES)
        return Principal(str(claims.get("preferred_username") or claims.get("sub") or "token"), granted)

    def _jwks_client(self) -> Any:
        import httpx
        import jwt

        with self._lock:
            if self._jwks is None:
                oidc = self.spec.oidc
                assert oidc is not None
                uri = oidc.jwks_uri
                if uri is None:
                    try:
                        discovery = httpx.get(f"{oidc.issuer}/.well-known/openid-configuration", timeout=10)
                        uri = discovery.json()["jwks_uri"]
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        raise AuthError(f"the OpenID issuer {oidc.issuer} cannot be asked for its keys: {exc}") \
                            from None
                self._jwks = jwt.PyJWKClient(uri, cache_keys=True, lifespan=300)
            return self._jwks

    def headers(self, authorization: str | None) -> Principal:
        """The principal of an Authorization header (anonymous without one)."""
        if not authorization:
            return ANONYMOUS
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise AuthError("malformed Basic credentials") from None
            found = self.password(name, password)
            if found is None:
                raise AuthError("unknown user or wrong password")
            return found
        if scheme.lower() == "bearer":
            return self.token(value.strip())
        raise AuthError(f"unsupported authorization scheme {scheme!r} (Basic or Bearer)")

    def challenge(self) -> str:
        """The WWW-Authenticate header value."""
        return 'Basic realm="udp", charset="UTF-8"' + (', Bearer realm="udp"' if self.spec.oidc else "")


class AuthMiddleware:
    """Every request gets its principal (`scope["udp.principal"]`); writes to the SensorThings API take
    the `write` role: 401 without credentials, 403 with too few rights."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        try:
            principal = self.auth.headers(headers.get("authorization"))
        except AuthError as exc:
            await self._refuse(send, 401, str(exc))
            return
        method = scope["method"].upper()
        if method in WRITE_METHODS and scope["path"].startswith("/v1.1") and not principal.can("write"):
            if principal is ANONYMOUS:
                await self._refuse(send, 401, "writing takes the write role: sign in (Basic or Bearer)")
            else:
                await self._refuse(send, 403, f"{principal.name} may not write (roles: "
                                              f"{', '.join(sorted(principal.roles)) or 'none'})")
            return
        await self.app({**scope, "udp.principal": principal}, receive, send)

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        body = orjson.dumps({"code": status, "type": "error", "message": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", self.auth.challenge().encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
