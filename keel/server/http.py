"""What every HTTP surface of Keel answers the same way: problem details
(``application/problem+json``) naming the field and the reason, statuses from who must act,
a body limit counted as bytes arrive, and a bound on open event streams per key."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from ray import serve

from keel.errors import ErrorKind, KeelError, RunNotFoundError, http_status

log = logging.getLogger("keel.api")
MAX_BODY = 1_000_000


def run_app(bound: Any, name: str, route_prefix: str) -> Any:
    """Deploy a bound Serve application without waiting on it to take traffic."""
    return serve.run(bound, name=name, route_prefix=route_prefix, blocking=False)


def problem(status: int, title: str, detail: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


TITLES = {
    ErrorKind.USAGE: "bad request",
    ErrorKind.NOT_FOUND: "not found",
    ErrorKind.FORBIDDEN: "forbidden",
    ErrorKind.CONFLICT: "conflict",
    ErrorKind.TRANSIENT: "unavailable",
    ErrorKind.INTERNAL: "internal error",
}


def keel_problem(exc: KeelError) -> JSONResponse:
    """An error as problem+json, its status from who must act (``keel.errors.OUTCOMES``).
    What is not the caller's to fix is described generically: the details, which may name
    storage or internals, stay in the server's log."""
    status = http_status(exc)
    if isinstance(exc, RunNotFoundError):  # never which runs exist, or where
        return problem(status, TITLES[exc.kind], "no such run", "run_id")
    if exc.kind in (ErrorKind.TRANSIENT, ErrorKind.INTERNAL):
        log.error("runs API: %s", exc)
        return problem(status, TITLES[exc.kind], "the request could not be completed; try again")
    return problem(status, TITLES[exc.kind], exc.message, exc.field)


class Unauthorized(KeelError):
    """No key, or one that maps to no principal: 401."""


class TooMany(KeelError):
    """Over a rate or a bound: 429 with ``Retry-After``."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_of(headers: Mapping[str, str]) -> str:
    """The API key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key``."""
    auth = headers.get("authorization", "")
    key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
    return key or headers.get("x-api-key", "")


class KeyRing:
    """API keys (stored hashed) to principals, each key rate-limited. Per replica, in
    memory: with N replicas a key gets up to N times the rate."""

    def __init__(self, keys: Mapping[str, str], rate: str) -> None:
        self.keys = dict(keys)  # sha256(key) -> principal
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_key = parse(rate)

    def principal(self, key: str) -> str:
        """Raises Unauthorized for no key or an unknown one, TooMany over the rate."""
        hashed = hash_key(key) if key else ""
        principal = self.keys.get(hashed) if key else None
        if principal is None:
            raise Unauthorized("a valid API key is required", field="authorization")
        if not self.limiter.hit(self.per_key, "key", hashed):
            raise TooMany(f"more than {self.per_key} requests for this key", field="authorization")
        return principal


class BodyLimit:
    """Reads a request body in full before the app sees it, counting bytes as they stream
    in (chunked bodies carry no Content-Length, and a Content-Length can lie), and answers
    413 the moment it passes ``MAX_BODY``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].rstrip("/") == scope.get("root_path", "").rstrip("/"):
            scope["path"] = scope.get("root_path", "").rstrip("/") + "/"  # the collection
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_BODY:
            await _too_large(scope, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                await _too_large(scope, send)
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                following: dict[str, Any] = await receive()  # disconnects, for streaming
                return following
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(scope: dict[str, Any], send: Any) -> None:
    response = problem(413, "body too large", f"at most {MAX_BODY} bytes", "body")

    async def nothing() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)


class Followers:
    """Open event streams per API key, in this replica. A stream takes its slot when it is
    answered (so the one too many is refused with 429 before it starts) and gives it back
    when the client goes away."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def take(self, key: str) -> FollowerSlot:
        if self.open[key] >= self.limit:
            raise TooMany(f"more than {self.limit} open event streams for this key", field="follow")
        self.open[key] += 1
        return FollowerSlot(self, key)


class FollowerSlot:
    def __init__(self, owner: Followers, key: str) -> None:
        self.owner, self.key, self.held = owner, key, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.owner.open[self.key] -= 1
