"""Access control: the `auth:` section of config.yml, who a request is, and what they may do.

Users come from the file (a PBKDF2 hash, or a `${VAR}` secret taken from the environment) with roles
`read`, `write` (which includes read), `moderate` (citizen feedback: includes read, not write) and `admin`
(every role); JWTs of an OpenID Connect issuer
(Keycloak, as Hamburg and FROST-Server use) are accepted as Bearer tokens, their roles read from a
claim. Reading is public; writing takes `write`; `read` also sees what is declared `access: internal`.
Failed password sign-ins are throttled per client address and per user name (udp.throttle: 429 with
Retry-After on HTTP, a refused CONNECT on the embedded broker), before any PBKDF2 run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from apicommon.declaration import declared
from udp.errors import ConfigError, whole_number
from udp.throttle import SignInThrottle, Throttled

ROLES = ("read", "write", "moderate", "admin")
# what each role may do besides itself
_INCLUDES = {"read": {"read"}, "write": {"read", "write"}, "moderate": {"read", "moderate"}, "admin": set(ROLES)}
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
_PBKDF2 = "pbkdf2_sha256"
_ITERATIONS = 600_000
INTERNAL_USER = "udp-internal"  # the platform's own MQTT clients on the embedded broker
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
AUTH_KEYS = ("users", "oidc", "max_failures", "lockout_s", "trusted_proxies")


@dataclass(frozen=True)
class Principal:
    """Who made a request and what they may do."""

    name: str
    roles: frozenset[str]

    def can(self, role: str) -> bool:
        """Whether the principal holds `role` or one that includes it."""
        return any(role in _INCLUDES[r] for r in self.roles if r in _INCLUDES)


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
    client_id: str | None = None  # the cockpit's public client (authorization code flow with PKCE); None: no sign-in


@dataclass(frozen=True)
class AuthSpec:
    """The `auth:` section."""

    users: dict[str, User]
    oidc: Oidc | None = None
    max_failures: int = 10  # wrong passwords per client address, and per user name, before a lock (udp.throttle)
    lockout_s: int = 60  # the window failures are counted in, and how long a lock lasts
    # peers whose X-Forwarded-For names the client (reverse proxies); others are the client themselves
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = LOOPBACK


def parse_auth(doc: Any) -> AuthSpec:
    """The `auth:` mapping; ConfigError names the key path."""
    declared(doc, "auth", AUTH_KEYS, ConfigError, shape="must be a mapping with `users` and/or `oidc`")
    users: dict[str, User] = {}
    for i, entry in enumerate(doc.get("users") or []):
        where = f"auth.users[{i}]"
        declared(entry, where, ("name", "password", "roles"), ConfigError,
                 shape="must be a mapping with name, password and roles")
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
        declared(o, "auth.oidc", ("issuer", "audience", "roles_claim", "jwks_uri", "client_id"), ConfigError)
        if o.get("client_id") is not None and not isinstance(o["client_id"], str):
            raise ConfigError("auth.oidc.client_id: the cockpit's client id at the issuer (a public client)")
        oidc = Oidc(o["issuer"].rstrip("/"), o.get("audience"), o.get("roles_claim", "realm_access.roles"),
                    o.get("jwks_uri"), o.get("client_id"))
    if not users and oidc is None:
        raise ConfigError("auth: declare `users` or `oidc` (without `auth:` the platform runs open)")
    limits = {key: whole_number(doc[key], f"auth.{key}", 1, high) for key, high in (("max_failures", 10_000),
                                                                             ("lockout_s", 86_400)) if key in doc}
    proxies = doc.get("trusted_proxies", [str(n) for n in LOOPBACK])
    if not isinstance(proxies, list):
        raise ConfigError("auth.trusted_proxies: a list of addresses or networks (127.0.0.1, 10.0.0.0/8)")
    networks = []
    for i, entry in enumerate(proxies):
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            raise ConfigError(f"auth.trusted_proxies[{i}]: {entry!r} is not an address or network") from None
    return AuthSpec(users, oidc, trusted_proxies=tuple(networks), **limits)


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


VERIFIED_S = 300  # how long a verified password is remembered


def _remember_key(name: str, password: str) -> tuple[str, str]:
    return name, hashlib.sha256(password.encode()).hexdigest()


def _basic(value: str) -> tuple[str, str]:
    """The user name and password of Basic credentials."""
    try:
        name, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials") from None
    return name, password


def client_address(scope: Scope, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """Who sent a request: the peer, or for a peer that is a trusted proxy the last address in
    X-Forwarded-For that is not one (the client as the nearest trusted proxy saw it)."""
    peer = (scope.get("client") or ("", 0))[0]
    chain = [a.strip() for key, value in scope.get("headers", []) if key.lower() == b"x-forwarded-for"
             for a in value.decode("latin-1").split(",") if a.strip()] + [peer]
    for address in reversed(chain):
        if not _trusted(address, trusted):
            return address
    return chain[0]  # every hop is a trusted proxy: the farthest one


def _trusted(address: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


class Authenticator:
    """Turns credentials into principals; remembers verified passwords briefly (PBKDF2 is slow on purpose,
    and a device sending Basic with every request must not cost one each time); refuses sign-ins from a
    client or for a user name after too many failures (udp.throttle) before any PBKDF2 run."""

    def __init__(self, spec: AuthSpec, internal_secret: str | None = None) -> None:
        self.spec = spec
        self.internal_secret = internal_secret or os.environ.get("UDP_INTERNAL_SECRET") or secrets.token_urlsafe(24)
        self.throttle = SignInThrottle(spec.max_failures, spec.lockout_s)
        self._jwks: Any = None
        self._verified: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def password(self, name: str, password: str, client: str = "") -> Principal | None:
        """The principal of a user name and password from a client address, None when they do not match;
        Throttled when the client or the user name has failed too often."""
        if name == INTERNAL_USER:
            # a random 192-bit secret compared in constant time: nothing to guess, and never locked out
            ok = hmac.compare_digest(self.internal_secret.encode(), password.encode())
            return Principal(INTERNAL_USER, frozenset({"admin"})) if ok else None
        found = self.remembered(name, password, client)
        if found is not None:
            return found  # verified a moment ago: no PBKDF2 run
        user = self.spec.users.get(name)
        attempt = self.throttle.attempt(client, None if user is None else name)
        if user is None or not verify_password(user.secret, password):
            return None
        self.throttle.succeeded(attempt)
        with self._lock:
            now = time.monotonic()
            if len(self._verified) > 10_000:
                self._verified = {k: t for k, t in self._verified.items() if t > now}
            self._verified[_remember_key(name, password)] = now + VERIFIED_S
        return Principal(name, user.roles)

    def remembered(self, name: str, password: str, client: str) -> Principal | None:
        """The principal of a user name and password verified within the last VERIFIED_S seconds;
        Throttled when the client may not sign in now."""
        user = self.spec.users.get(name)
        if user is None:
            return None
        self.throttle.check(client, name)
        with self._lock:
            if self._verified.get(_remember_key(name, password), 0) > time.monotonic():
                return Principal(name, user.roles)
        return None

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

    def headers(self, authorization: str | None, client: str = "") -> Principal:
        """The principal of an Authorization header from a client address (anonymous without one)."""
        if not authorization:
            return ANONYMOUS
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            name, password = _basic(value)
            found = self.password(name, password, client)
            if found is None:
                raise AuthError("unknown user or wrong password")
            return found
        if scheme.lower() == "bearer":
            return self.token(value.strip())
        raise AuthError(f"unsupported authorization scheme {scheme!r} (Basic or Bearer)")

    def quick(self, authorization: str | None, client: str) -> Principal | None:
        """The principal when it is known without slow work (none, or a remembered password), else None;
        Throttled when the client may not sign in now."""
        if not authorization:
            return ANONYMOUS
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, password = _basic(value)
        except AuthError:
            return None
        return None if name == INTERNAL_USER else self.remembered(name, password, client)

    def challenge(self) -> str:
        """The WWW-Authenticate header value."""
        return 'Basic realm="udp", charset="UTF-8"' + (', Bearer realm="udp"' if self.spec.oidc else "")


class AuthMiddleware:
    """Every request gets its principal (`scope["udp.principal"]`); writes to the SensorThings API take
    the `write` role: 401 without credentials, 403 with too few rights, 429 with Retry-After after too many
    failed sign-ins (udp.throttle)."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth
        # password checks run off the event loop, two at a time: the database's threads stay free for reads
        self.limiter = anyio.CapacityLimiter(2)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        authorization = headers.get("authorization")
        client = client_address(scope, self.auth.spec.trusted_proxies)
        try:
            principal = self.auth.quick(authorization, client) or await anyio.to_thread.run_sync(
                self.auth.headers, authorization, client, limiter=self.limiter)
        except Throttled as exc:
            await self._refuse(send, 429, f"{exc}: try again in {exc.retry_after} s",
                               [(b"retry-after", str(exc.retry_after).encode())])
            return
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
        await self.app({**scope, "udp.principal": principal, "udp.client": client}, receive, send)

    async def _refuse(self, send: Send, status: int, message: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = orjson.dumps({"code": status, "type": "error", "message": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *(extra or [])]
        if status == 401:
            headers.append((b"www-authenticate", self.auth.challenge().encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
