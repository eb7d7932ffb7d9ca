"""Who is calling: users, passwords, signed sessions, CSRF tokens and login throttling.

- `admin` signs in with the admin secret's current password; other users live in the table with
  argon2 hashes and a role (`admin` or `user`).
- A session is a signed cookie `{u: user, g: generation, n: nonce}`. It stays valid across portal
  tasks (all share the session key) and is revoked when the user's generation changes: a user's
  generation is bumped on every password or role change, and deleting the user removes it; the
  built-in admin's generation is a fingerprint of the current admin password. Signing out
  revokes that one session (its nonce is recorded in the table until the session would expire).
- CSRF: forms carry a token derived from the session nonce (or, before sign-in, a double-submit
  cookie).
- Sign-in attempts are counted per (user name, client address) in the table, reserved with a
  conditional write before the password is checked, so every task sees the same count and
  parallel attempts cannot all be checked; past the limit that client backs off (doubling waits),
  while the same user signing in from another address is not affected.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Literal

from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from easel_contracts import table as keys
from easel_webui.errors import Conflict, NotFound, PortalError, TooManyAttempts
from easel_webui.hashing import BoundedHasher
from easel_webui.secret_cache import SecretCache
from easel_webui.settings import Settings
from easel_webui.store import Table, iso_now, now

ADMIN_USERNAME = "admin"
Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")
SESSION_COOKIE = "easel_session"
LOGIN_CSRF_COOKIE = "easel_login_csrf"
USERNAME_RE = re.compile(r"^[a-z][a-z0-9_-]{1,30}[a-z0-9]$")
MIN_PASSWORD_LENGTH = 12

BASIC_CACHE_SECONDS = 60.0
# conditional writes lost to a parallel attempt before the caller is told to retry
ATTEMPT_RESERVE_TRIES = 5


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    generation: str
    builtin: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def check_username(value: str) -> str:
    value = (value or "").strip().lower()
    if not USERNAME_RE.match(value):
        raise PortalError(
            "username: use 3-32 lower-case letters, digits, '-' or '_', starting with a letter"
        )
    return value


def check_password(value: str) -> str:
    if len(value or "") < MIN_PASSWORD_LENGTH:
        raise PortalError(f"password: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(value) > 256:
        raise PortalError("password: use at most 256 characters")
    return value


def check_role(value: str) -> Role:
    if value not in ROLES:
        raise PortalError("role: choose admin or user")
    return value  # type: ignore[return-value]


class Auth:
    """Sign-in, sessions and user management over the table and the secrets."""

    def __init__(self, *, settings: Settings, table: Table, secrets_cache: SecretCache) -> None:
        self.settings = settings
        self.table = table
        self.secrets = secrets_cache
        self._hasher = BoundedHasher(time_cost=settings.password_hash_time_cost,
                                     memory_kib=settings.password_hash_memory_kib,
                                     slots=settings.password_hash_concurrency,
                                     wait_seconds=settings.password_hash_wait_seconds)
        # Verified against when the user does not exist, so timing does not reveal names.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        # HTTP Basic clients send the password on every call: remember a verified one briefly
        # (keyed by an HMAC, never the password) instead of paying argon2 each time.
        self._basic_ok: dict[str, tuple[float, str]] = {}
        # one check per credential at a time: clients sharing one re-check it once when its
        # entry expires, the others wait for that answer (not 30 argon2 checks at once)
        self._basic_checks: dict[str, threading.Lock] = {}
        self._basic_checks_lock = threading.Lock()
    # --- keys

    def _session_key(self) -> str:
        return self.secrets.get(self.settings.session_secret)

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._session_key(), salt="easel-session")

    def _admin_generation(self, password: str) -> str:
        digest = hmac.new(self._session_key().encode(), b"admin:" + password.encode(),
                          hashlib.sha256)
        return digest.hexdigest()[:20]

    # --- users

    def _user_record(self, username: str) -> dict[str, Any] | None:
        return self.table.get(*keys.user_key(username))

    def lookup(self, username: str) -> User | None:
        if username == ADMIN_USERNAME:
            return self._admin_user()
        return self._user_from(self._user_record(username))

    def _admin_user(self) -> User:
        password = self.secrets.admin_password(self.settings.admin_secret)
        return User(ADMIN_USERNAME, "admin", self._admin_generation(password), builtin=True)

    @staticmethod
    def _user_from(record: dict[str, Any] | None) -> User | None:
        if not record:
            return None
        return User(record["username"], record["role"], str(record.get("generation", 0)))

    def list_users(self) -> list[dict[str, Any]]:
        users = [{"username": ADMIN_USERNAME, "role": "admin", "builtin": True,
                  "created_at": ""}]
        for record in self.table.query_index(keys.USERS_INDEX):
            users.append({"username": record["username"], "role": record["role"],
                          "builtin": False, "created_at": record.get("created_at", "")})
        return users

    def create_user(self, *, username: str, password: str, role: str, by: str) -> None:
        username = check_username(username)
        if username == ADMIN_USERNAME:
            raise Conflict("username: 'admin' is the built-in administrator")
        check_password(password)
        role = check_role(role)
        if self.table.get(*keys.user_tombstone_key(username)):
            raise Conflict(
                f"username: {username!r} belonged to a deleted user and is never reused (their "
                "images and training data are stored under it); choose another name"
            )
        created = self.table.put(
            {
                **keys.user_key(username).item(), **keys.user_index(username),
                "username": username, "role": role,
                "password_hash": self._hasher.hash(password), "generation": 1,
                "created_at": iso_now(), "created_by": by,
            },
            must_not_exist=True,
        )
        if not created:
            raise Conflict(f"username: {username!r} already exists")

    def _require_table_user(self, username: str) -> None:
        if username == ADMIN_USERNAME:
            raise PortalError(
                "The built-in admin's password is the admin secret in Secrets Manager; "
                "it is rotated there, not here."
            )

    def set_password(self, *, username: str, password: str) -> None:
        self._require_table_user(username)
        check_password(password)
        updated = self.table.update(
            *keys.user_key(username),
            {"password_hash": self._hasher.hash(password), "password_changed_at": iso_now()},
            add={"generation": 1},
        )
        if updated is None:
            raise NotFound(f"user {username!r} does not exist")

    def set_role(self, *, username: str, role: str) -> None:
        self._require_table_user(username)
        role = check_role(role)
        updated = self.table.update(
            *keys.user_key(username), {"role": role}, add={"generation": 1}
        )
        if updated is None:
            raise NotFound(f"user {username!r} does not exist")

    def delete_user(self, *, username: str) -> None:
        self._require_table_user(username)
        if self._user_record(username) is None:
            raise NotFound(f"user {username!r} does not exist")
        # the tombstone first: from now on the name cannot be given to a new user
        self.table.put({**keys.user_tombstone_key(username).item(), "deleted_at": iso_now()})
        self.table.delete(*keys.user_key(username))
        self.table.delete(*keys.user_prefs_key(username))

    # --- sign-in

    def _backoff(self, attempts: int) -> float:
        """Seconds the client waits after its `attempts`-th unsuccessful reserved attempt: none
        for the first `login_max_failures - 1`, then doubling up to the window."""
        over = attempts - self.settings.login_max_failures
        if over < 0:
            return 0.0
        return float(min(self.settings.login_backoff_seconds * 2 ** min(over, 30),
                         self.settings.login_window_seconds))

    def _reserve_attempt(self, name: str, client: str) -> None:
        """Count this attempt for (user, client) in the table BEFORE the password is checked,
        with a conditional write, so parallel attempts (on any portal task) cannot all be
        checked: once the count is spent, the client waits (backing off), others are unaffected.
        A success deletes the record."""
        key = keys.login_attempts_key(name, client)
        for _ in range(ATTEMPT_RESERVE_TRIES):
            record = self.table.get(*key)
            moment = now()
            live = bool(record) and record.get(keys.TTL, 0) >= moment
            attempts = int(record.get("attempts", 0)) if live else 0
            not_before = float(record.get("not_before", 0)) if live else 0.0
            if not_before > moment:
                wait = math.ceil(not_before - moment)
                raise TooManyAttempts(
                    "Too many failed sign-ins for this user from your address; wait "
                    f"{wait} seconds and try again.", retry_after=wait)
            attempts += 1
            version = int(record.get("version", 0)) + 1 if record else 1
            not_before = moment + self._backoff(attempts)
            item = {**key.item(), "attempts": attempts, "not_before": not_before,
                    "version": version,
                    keys.TTL: math.ceil(not_before + self.settings.login_window_seconds)}
            if self.table.put(item, must_not_exist=record is None,
                              expect=("version", version - 1) if record else None):
                return
        raise TooManyAttempts("Sign-in attempts for this user are arriving faster than they can "
                              "be checked; retry in a few seconds.", retry_after=2)

    def authenticate(self, username: str, password: str, client: str = "unknown") -> User:
        """The user, or `PortalError` (wrong credentials) / `TooManyAttempts`. `client` is the
        caller's address (`client_address`): attempts are counted per (user name, client)."""
        name = (username or "").strip().lower()[:64]
        if not name or not password:
            raise PortalError("Enter your user name and password.", status_code=401)
        throttle_name = name if USERNAME_RE.match(name) else "_invalid"
        self._reserve_attempt(throttle_name, client[:64])
        user = self._verify(name, password)
        if user is None:
            raise PortalError("Wrong user name or password.", status_code=401)
        # a success clears this client's count
        self.table.delete(*keys.login_attempts_key(throttle_name, client[:64]))
        return user

    def authenticate_basic(self, username: str, password: str,
                           client: str = "unknown") -> User:
        """`authenticate` for HTTP Basic: a verified password is remembered for a minute; the
        user's current generation is still checked on every call, so revocation is immediate."""
        name = (username or "").strip().lower()[:64]
        key = hmac.new(self._session_key().encode(), f"{name}\0{password}".encode(),
                       hashlib.sha256).hexdigest()
        user = self._basic_cached(key, name)
        if user is not None:
            return user
        with self._basic_checks_lock:
            check = self._basic_checks.setdefault(key, threading.Lock())
        try:
            with check:
                user = self._basic_cached(key, name)  # checked while this caller waited
                if user is not None:
                    return user
                user = self.authenticate(name, password, client)
                if len(self._basic_ok) > 10000:
                    self._basic_ok.clear()
                self._basic_ok[key] = (now() + BASIC_CACHE_SECONDS, user.generation)
                return user
        finally:
            with self._basic_checks_lock:
                if not check.locked():
                    self._basic_checks.pop(key, None)

    def _basic_cached(self, key: str, name: str) -> User | None:
        """The user of a credential verified less than a minute ago, while its generation
        (revocation) still matches; an expired or revoked entry is dropped."""
        cached = self._basic_ok.get(key)
        if not cached:
            return None
        if cached[0] > now():
            user = self.lookup(name)
            if user is not None and hmac.compare_digest(user.generation, cached[1]):
                return user
        self._basic_ok.pop(key, None)
        return None

    def _verify(self, name: str, password: str) -> User | None:
        if name == ADMIN_USERNAME:
            expected = self.secrets.admin_password(self.settings.admin_secret)
            if hmac.compare_digest(expected.encode(), password.encode()):
                return self.lookup(ADMIN_USERNAME)
            return None
        record = self._user_record(name) if USERNAME_RE.match(name) else None
        try:
            self._hasher.verify(record["password_hash"] if record else self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if not record:
            return None
        return User(record["username"], record["role"], str(record.get("generation", 0)))

    # --- sessions

    def issue_session(self, user: User) -> str:
        payload = {"u": user.username, "g": user.generation, "n": secrets.token_urlsafe(16)}
        return self._serializer().dumps(payload)

    def read_session(self, cookie: str | None) -> tuple[User, str] | None:
        """The signed-in user and the session nonce, or None when missing/expired/revoked."""
        if not cookie:
            return None
        try:
            payload = self._serializer().loads(
                cookie, max_age=self.settings.session_max_age_seconds
            )
        except BadSignature:
            return None
        if not isinstance(payload, dict) or not {"u", "g", "n"} <= payload.keys():
            return None
        name, nonce = str(payload["u"]), str(payload["n"])
        # the user's record and the session's revocation in one round trip
        wanted = [keys.revoked_session_key(nonce)]
        if name != ADMIN_USERNAME:
            wanted.append(keys.user_key(name))
        found = self.table.get_many(wanted)
        revoked = found.get(keys.revoked_session_key(nonce))
        if revoked and revoked.get(keys.TTL, 0) >= now():
            return None
        user = self._admin_user() if name == ADMIN_USERNAME else \
            self._user_from(found.get(keys.user_key(name)))
        if user is None or not hmac.compare_digest(user.generation, str(payload["g"])):
            return None
        return user, nonce

    def revoke_session(self, nonce: str) -> None:
        """Sign-out: the session's cookie stops working on every portal task, not only in the
        browser that deleted it; the record expires (table TTL) when the session would have."""
        expires = math.ceil(now() + self.settings.session_max_age_seconds)
        self.table.put({**keys.revoked_session_key(nonce).item(), keys.TTL: expires,
                        "revoked_at": iso_now()})

    def csrf_token(self, nonce: str) -> str:
        key = self._session_key().encode()
        return hmac.new(key, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, nonce: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(nonce), token or "")
