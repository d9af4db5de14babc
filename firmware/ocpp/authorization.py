"""Who may charge: OCPP 2.0.1/2.1 authorization (part 2, blocks C and D).

Three local sources answer before the CSMS is asked: free charging (AuthCtrlr.Enabled = false),
the Local Authorization List the CSMS installs with SendLocalList, and the Authorization Cache
filled from the idTokenInfo of Authorize and TransactionEvent responses. `decide` is the pure
rule set that picks between them for one presented idToken; `Authorizer` is the shell that owns
the SQLite tables behind the list and the cache and answers SendLocalList, GetLocalListVersion
and ClearCache.

Interpretations the spec leaves open, chosen here and relied on by the tests:

- Two idTokens are the same token when idToken and type are equal (C01.FR.25); the idToken value
  is compared case-insensitively, as IdTokenType's definition says.
- The list takes precedence over the cache: a token found in the list is decided by its list
  entry alone (C13, C14).
- A token that is known locally with a status other than Accepted is never treated as an
  unknown token offline, so OfflineTxForUnknownIdEnabled cannot let a Blocked card charge
  (C13.FR.04 as amended by the errata).
- With DisableRemoteAuthorization the list and the cache are the only authority, so they are
  consulted online even when LocalPreAuthorize is false.
- AuthCacheCtrlr.Storage and LocalAuthListCtrlr.Storage count bytes, as the device model
  defines them: an entry weighs the UTF-8 length of its compact JSON idToken plus idTokenInfo
  (`entry_bytes`). The cache evicts (AuthCacheCtrlr.Policy) until it fits; a list update that
  would not fit, or would exceed the Entries maxLimit, fails as a whole.
- AuthCacheCtrlr.LifeTime counts from the last use or update of an entry (the device model's
  "since it is last used"; an update by a CSMS response counts as a use, which also covers the
  errata's "since idTokenInfo was last updated", C10.FR.10). cacheExpiryDateTime ends an entry
  regardless (C10.FR.13); one already in the past keeps a token out of the cache. Expired cache
  entries are removed, so the token is unknown again.
- A list entry whose idTokenInfo.cacheExpiryDateTime has passed counts as Expired (the 2.1
  LocalAuthListCtrlr.SupportsExpiryDateTime behaviour).
- A disabled list keeps its rows: GetLocalListVersion answers 0 (D02.FR.03) and the list is not
  used, but re-enabling it restores the installed version.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from firmware import logs
from firmware.ocpp.dates import parse_datetime
from firmware.ocpp.db import transaction

log = logs.get("ocpp.authorization")

JsonDict = dict[str, Any]


class AuthOutcome(Enum):
    ACCEPT = "accept"
    ASK_CSMS = "ask_csms"  # send AuthorizeRequest and feed the answer to on_authorize_response
    REJECT = "reject"


class AuthSource(Enum):
    FREE = "free"  # AuthCtrlr.Enabled = false
    NO_AUTHORIZATION_TOKEN = "no_authorization_token"
    CENTRAL_TOKEN = "central_token"
    LOCAL_LIST = "local_list"
    CACHE = "cache"
    OFFLINE_UNKNOWN = "offline_unknown"  # OfflineTxForUnknownIdEnabled (C15)
    CSMS = "csms"
    UNKNOWN = "unknown"  # not known locally and nobody could be asked


class AuthReason(Enum):
    ACCEPTED = "accepted"
    # The AuthorizationStatusEnumType values other than Accepted.
    BLOCKED = "blocked"
    CONCURRENT_TX = "concurrent_tx"
    EXPIRED = "expired"
    INVALID = "invalid"
    NO_CREDIT = "no_credit"
    NOT_ALLOWED_TYPE_EVSE = "not_allowed_type_evse"
    NOT_AT_THIS_LOCATION = "not_at_this_location"
    NOT_AT_THIS_TIME = "not_at_this_time"
    UNKNOWN = "unknown"
    # Local policy.
    UNKNOWN_OFFLINE = "unknown_offline"
    LOCAL_AUTHORIZE_OFFLINE_DISABLED = "local_authorize_offline_disabled"
    REMOTE_AUTHORIZATION_DISABLED = "remote_authorization_disabled"
    EVSE_NOT_ALLOWED = "evse_not_allowed"  # idTokenInfo.evseId does not list this EVSE
    # Why the CSMS has to be asked.
    NOT_FOUND_LOCALLY = "not_found_locally"
    LOCAL_PRE_AUTHORIZE_DISABLED = "local_pre_authorize_disabled"
    LOCAL_STATUS_NOT_ACCEPTED = "local_status_not_accepted"


class AuthorizationStatus(Enum):
    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    CONCURRENT_TX = "ConcurrentTx"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    NO_CREDIT = "NoCredit"
    NOT_ALLOWED_TYPE_EVSE = "NotAllowedTypeEVSE"
    NOT_AT_THIS_LOCATION = "NotAtThisLocation"
    NOT_AT_THIS_TIME = "NotAtThisTime"
    UNKNOWN = "Unknown"


_STATUS_REASON = {
    AuthorizationStatus.ACCEPTED: AuthReason.ACCEPTED,
    AuthorizationStatus.BLOCKED: AuthReason.BLOCKED,
    AuthorizationStatus.CONCURRENT_TX: AuthReason.CONCURRENT_TX,
    AuthorizationStatus.EXPIRED: AuthReason.EXPIRED,
    AuthorizationStatus.INVALID: AuthReason.INVALID,
    AuthorizationStatus.NO_CREDIT: AuthReason.NO_CREDIT,
    AuthorizationStatus.NOT_ALLOWED_TYPE_EVSE: AuthReason.NOT_ALLOWED_TYPE_EVSE,
    AuthorizationStatus.NOT_AT_THIS_LOCATION: AuthReason.NOT_AT_THIS_LOCATION,
    AuthorizationStatus.NOT_AT_THIS_TIME: AuthReason.NOT_AT_THIS_TIME,
    AuthorizationStatus.UNKNOWN: AuthReason.UNKNOWN,
}


class CachePolicy(Enum):
    """AuthCacheCtrlr.Policy: which entry goes when the cache is full."""

    LRU = "LRU"
    LFU = "LFU"
    FIFO = "FIFO"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """What the device model says about authorization, read afresh for every decision."""

    enabled: bool = True  # AuthCtrlr.Enabled; false: free charging
    local_pre_authorize: bool = True  # AuthCtrlr.LocalPreAuthorize
    local_authorize_offline: bool = True  # AuthCtrlr.LocalAuthorizeOffline
    offline_tx_for_unknown_id: bool = False  # AuthCtrlr.OfflineTxForUnknownIdEnabled
    disable_remote_authorization: bool = False  # AuthCtrlr.DisableRemoteAuthorization
    cache_enabled: bool = True  # AuthCacheCtrlr.Enabled
    cache_lifetime_s: int | None = None  # AuthCacheCtrlr.LifeTime; None: entries do not age
    cache_storage_bytes: int = 64 * 1024  # AuthCacheCtrlr.Storage maxLimit
    cache_policy: CachePolicy = CachePolicy.LRU  # AuthCacheCtrlr.Policy
    cache_disable_post_authorize: bool = False  # AuthCacheCtrlr.DisablePostAuthorize
    list_enabled: bool = True  # LocalAuthListCtrlr.Enabled
    list_disable_post_authorize: bool = False  # LocalAuthListCtrlr.DisablePostAuthorize
    list_max_entries: int = 10_000  # LocalAuthListCtrlr.Entries maxLimit
    list_storage_bytes: int = 4 * 1024 * 1024  # LocalAuthListCtrlr.Storage maxLimit
    list_items_per_message: int = 500  # LocalAuthListCtrlr.ItemsPerMessage
    list_bytes_per_message: int = 256 * 1024  # LocalAuthListCtrlr.BytesPerMessage

    def __post_init__(self) -> None:
        if not isinstance(self.cache_policy, CachePolicy):
            raise ValueError(f"cache_policy must be a CachePolicy, not {self.cache_policy!r}")
        if self.cache_lifetime_s is not None and self.cache_lifetime_s < 0:
            raise ValueError("cache_lifetime_s must be >= 0")
        for name in ("cache_storage_bytes", "list_max_entries", "list_storage_bytes",
                     "list_items_per_message", "list_bytes_per_message"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class ListEntry:
    id_token_info: JsonDict
    expires_at: float | None  # idTokenInfo.cacheExpiryDateTime, seconds since the epoch


@dataclass(frozen=True, slots=True)
class CacheEntry:
    id_token_info: JsonDict
    expires_at: float | None  # idTokenInfo.cacheExpiryDateTime, seconds since the epoch
    last_used: float  # last use or update: AuthCacheCtrlr.LifeTime counts from here


@dataclass(frozen=True, slots=True)
class AuthDecision:
    outcome: AuthOutcome
    source: AuthSource
    id_token_info: JsonDict | None  # the idTokenInfo the decision rests on, when there is one
    reason: AuthReason

    @property
    def accepted(self) -> bool:
        return self.outcome is AuthOutcome.ACCEPT


_NO_AUTHORIZATION = "NoAuthorization"
_CENTRAL = "Central"
# Tokens `decide` accepts without looking them up, so the cache has no use for them.
_LOCALLY_DECIDED_TYPES = (_NO_AUTHORIZATION, _CENTRAL)


def token_key(id_token: Mapping[str, Any]) -> tuple[str, str]:
    """The identity of an idToken: its value (case-insensitive) and its type (C01.FR.25)."""
    value, kind = id_token.get("idToken"), id_token.get("type")
    if not isinstance(value, str) or not isinstance(kind, str):
        raise ValueError("an idToken needs string idToken and type fields")
    return value.casefold(), kind


def tokens_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """C01.FR.25: additionalInfo does not take part in the comparison."""
    return token_key(a) == token_key(b)


def allowed_on_evse(id_token_info: Mapping[str, Any], evse_id: int) -> bool:
    """idTokenInfo.evseId restricts a token to some EVSEs; without it every EVSE is allowed."""
    evses = id_token_info.get("evseId")
    return not evses or evse_id in evses


def entry_bytes(id_token: Mapping[str, Any], id_token_info: Mapping[str, Any]) -> int:
    """What one list or cache entry weighs against its Storage maxLimit."""
    return len(_dump(id_token).encode()) + len(_dump(id_token_info).encode())


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _expiry(id_token_info: Mapping[str, Any]) -> float | None:
    text = id_token_info.get("cacheExpiryDateTime")
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("cacheExpiryDateTime must be a string")
    return parse_datetime(text)


def _status(id_token_info: Mapping[str, Any]) -> AuthorizationStatus:
    try:
        return AuthorizationStatus(id_token_info.get("status"))
    except ValueError:
        # A status this firmware does not know cannot be an Accepted.
        return AuthorizationStatus.INVALID


def cache_entry_usable(entry: CacheEntry, settings: AuthSettings, now: float) -> bool:
    """C10.FR.13: past cacheExpiryDateTime; C10.FR.10: more than LifeTime since last use."""
    if entry.expires_at is not None and now >= entry.expires_at:
        return False
    return settings.cache_lifetime_s is None or now - entry.last_used <= settings.cache_lifetime_s


@dataclass(frozen=True, slots=True)
class _Known:
    source: AuthSource
    info: JsonDict
    status: AuthorizationStatus
    post_authorize_disabled: bool


def _known_locally(settings: AuthSettings, list_entry: ListEntry | None,
                   cache_entry: CacheEntry | None, now: float) -> _Known | None:
    if settings.list_enabled and list_entry is not None:
        info = list_entry.id_token_info
        if list_entry.expires_at is not None and now >= list_entry.expires_at:
            info = {**info, "status": AuthorizationStatus.EXPIRED.value}
        return _Known(AuthSource.LOCAL_LIST, info, _status(info),
                      settings.list_disable_post_authorize)
    if (settings.cache_enabled and cache_entry is not None
            and cache_entry_usable(cache_entry, settings, now)):
        info = cache_entry.id_token_info
        return _Known(AuthSource.CACHE, info, _status(info), settings.cache_disable_post_authorize)
    return None


def _accept(source: AuthSource, info: JsonDict | None, evse_id: int | None) -> AuthDecision:
    if info is not None and evse_id is not None and not allowed_on_evse(info, evse_id):
        return AuthDecision(outcome=AuthOutcome.REJECT, source=source, id_token_info=info,
                            reason=AuthReason.EVSE_NOT_ALLOWED)
    return AuthDecision(outcome=AuthOutcome.ACCEPT, source=source, id_token_info=info,
                        reason=AuthReason.ACCEPTED)


def _reject(source: AuthSource, info: JsonDict | None, reason: AuthReason) -> AuthDecision:
    return AuthDecision(outcome=AuthOutcome.REJECT, source=source, id_token_info=info,
                        reason=reason)


def _ask(reason: AuthReason) -> AuthDecision:
    return AuthDecision(outcome=AuthOutcome.ASK_CSMS, source=AuthSource.CSMS, id_token_info=None,
                        reason=reason)


def decide(id_token: Mapping[str, Any], *, online: bool, settings: AuthSettings,
           list_entry: ListEntry | None, cache_entry: CacheEntry | None, now: float,
           evse_id: int | None = None) -> AuthDecision:
    """What to do with an idToken presented at the station (or in RequestStartTransaction with
    AuthorizeRemoteStart). `list_entry` and `cache_entry` are what the list and the cache hold
    for this token; they are ignored when their function is disabled. `evse_id`, once known,
    is checked against idTokenInfo.evseId."""
    if not settings.enabled:
        return _accept(AuthSource.FREE, None, None)
    kind = id_token.get("type")
    if kind == _NO_AUTHORIZATION:
        # Generated by the station itself (start button, free vending): nothing to authorize.
        return _accept(AuthSource.NO_AUTHORIZATION_TOKEN, None, None)
    if kind == _CENTRAL:
        # C03.FR.01, C05.FR.01: a Central token was issued by the CSMS; no AuthorizeRequest.
        return _accept(AuthSource.CENTRAL_TOKEN, None, None)
    known = _known_locally(settings, list_entry, cache_entry, now)
    if online:
        return _decide_online(known, settings, evse_id)
    return _decide_offline(known, settings, evse_id)


def _decide_online(known: _Known | None, settings: AuthSettings,
                   evse_id: int | None) -> AuthDecision:
    local_is_final = settings.disable_remote_authorization
    if known is None:
        if local_is_final:
            return _reject(AuthSource.UNKNOWN, None, AuthReason.REMOTE_AUTHORIZATION_DISABLED)
        return _ask(AuthReason.NOT_FOUND_LOCALLY)  # C01
    if known.status is AuthorizationStatus.ACCEPTED:
        if settings.local_pre_authorize or local_is_final:
            return _accept(known.source, known.info, evse_id)  # C14.FR.02, C12
        return _ask(AuthReason.LOCAL_PRE_AUTHORIZE_DISABLED)
    if known.post_authorize_disabled or local_is_final:
        return _reject(known.source, known.info, _STATUS_REASON[known.status])
    # C14.FR.03 (list), C10.FR.03 and C12.FR.05 (cache): ask again about a non-Accepted token.
    return _ask(AuthReason.LOCAL_STATUS_NOT_ACCEPTED)


def _decide_offline(known: _Known | None, settings: AuthSettings,
                    evse_id: int | None) -> AuthDecision:
    if known is not None and known.status is not AuthorizationStatus.ACCEPTED:
        return _reject(known.source, known.info, _STATUS_REASON[known.status])  # C13.FR.04
    if known is not None and settings.local_authorize_offline:
        return _accept(known.source, known.info, evse_id)  # C13.FR.02/03 (list), C12 (cache)
    if settings.offline_tx_for_unknown_id:
        return _accept(AuthSource.OFFLINE_UNKNOWN, None, None)  # C15
    if known is not None:
        return _reject(AuthSource.UNKNOWN, None, AuthReason.LOCAL_AUTHORIZE_OFFLINE_DISABLED)
    return _reject(AuthSource.UNKNOWN, None, AuthReason.UNKNOWN_OFFLINE)


def csms_decision(id_token_info: Mapping[str, Any], *, evse_id: int | None = None) -> AuthDecision:
    """The CSMS's verdict in an AuthorizeResponse or TransactionEventResponse."""
    info = dict(id_token_info)
    status = _status(info)
    if status is AuthorizationStatus.ACCEPTED:
        return _accept(AuthSource.CSMS, info, evse_id)
    return _reject(AuthSource.CSMS, info, _STATUS_REASON[status])


class _ListRejectedError(Exception):
    def __init__(self, status: str, reason_code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason_code = reason_code
        self.detail = detail


_SCHEMA = """
CREATE TABLE IF NOT EXISTS authorization_list_version (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS authorization_list (
    token TEXT NOT NULL,          -- idToken casefolded: the match key with type (C01.FR.25)
    type TEXT NOT NULL,
    id_token TEXT NOT NULL,       -- the IdTokenType as received
    id_token_info TEXT NOT NULL,
    expires_at REAL,
    size INTEGER NOT NULL,
    PRIMARY KEY (token, type)
);
CREATE TABLE IF NOT EXISTS authorization_cache (
    token TEXT NOT NULL,
    type TEXT NOT NULL,
    id_token TEXT NOT NULL,
    id_token_info TEXT NOT NULL,
    expires_at REAL,
    last_used REAL NOT NULL,
    use_count INTEGER NOT NULL,
    inserted_seq INTEGER NOT NULL,  -- FIFO order
    used_seq INTEGER NOT NULL,      -- LRU order; clock readings can tie, a counter cannot
    size INTEGER NOT NULL,
    PRIMARY KEY (token, type)
);
"""

_EVICTION_ORDER = {
    CachePolicy.LRU: "used_seq",
    CachePolicy.LFU: "use_count, used_seq",
    CachePolicy.FIFO: "inserted_seq",
}


def _status_response(status: str, reason_code: str | None = None,
                     detail: str | None = None) -> JsonDict:
    response: JsonDict = {"status": status}
    if reason_code is not None:
        info: JsonDict = {"reasonCode": reason_code}
        if detail:
            info["additionalInfo"] = detail[:512]
        response["statusInfo"] = info
    return response


class Authorizer:
    """The list and the cache in SQLite, and the station's entry points for authorization.

    Order of use for a presented token: `decide`; on ASK_CSMS send AuthorizeRequest and pass its
    idTokenInfo to `on_authorize_response` (no answer while online counts as offline: call
    `decide` again with online=False). Pass the idTokenInfo of every TransactionEventResponse
    that carries one to `on_transaction_response`.
    """

    def __init__(self, db: sqlite3.Connection, settings: Callable[[], AuthSettings]) -> None:
        self._db = db
        self._settings = settings
        db.executescript(_SCHEMA)

    # -- decisions ----------------------------------------------------------------------------

    def decide(self, id_token: Mapping[str, Any], *, online: bool, now: float,
               evse_id: int | None = None) -> AuthDecision:
        settings = self._settings()
        consult = settings.enabled and id_token.get("type") not in _LOCALLY_DECIDED_TYPES
        list_entry = self.list_entry(id_token) if consult and settings.list_enabled else None
        cache_entry = self.cache_entry(id_token) if consult and settings.cache_enabled else None
        if cache_entry is not None and not cache_entry_usable(cache_entry, settings, now):
            self._cache_delete(id_token)  # C10.FR.10, C10.FR.13
            cache_entry = None
        decision = decide(id_token, online=online, settings=settings, list_entry=list_entry,
                          cache_entry=cache_entry, now=now, evse_id=evse_id)
        if decision.source is AuthSource.CACHE:
            self._cache_touch(id_token, now)
        logs.log(log, "auth_decision", token_type=id_token.get("type"), online=online,
                 outcome=decision.outcome, source=decision.source, reason=decision.reason)
        return decision

    def on_authorize_response(self, id_token: Mapping[str, Any], id_token_info: Mapping[str, Any],
                              now: float, *, evse_id: int | None = None) -> AuthDecision:
        """C10: the answer to our AuthorizeRequest goes into the cache, whatever its status."""
        self._cache_store(id_token, id_token_info, now)
        return csms_decision(id_token_info, evse_id=evse_id)

    def on_transaction_response(self, id_token: Mapping[str, Any],
                                id_token_info: Mapping[str, Any], now: float, *,
                                evse_id: int | None = None) -> AuthDecision:
        """C10: a TransactionEventResponse's idTokenInfo updates the cache too; the decision
        tells the station whether the transaction's token is (still) accepted (E05)."""
        self._cache_store(id_token, id_token_info, now)
        return csms_decision(id_token_info, evse_id=evse_id)

    # -- Local Authorization List (D01, D02) --------------------------------------------------

    def send_local_list(self, payload: Mapping[str, Any]) -> JsonDict:
        """SendLocalListRequest -> SendLocalListResponse."""
        try:
            self._apply_local_list(payload, self._settings())
        except _ListRejectedError as rejected:
            logs.log(log, "local_list_rejected", status=rejected.status,
                     reason=rejected.reason_code, detail=rejected.detail,
                     update_type=payload.get("updateType"), version=payload.get("versionNumber"))
            return _status_response(rejected.status, rejected.reason_code, rejected.detail)
        except sqlite3.Error as exc:
            logs.log(log, "local_list_store_failed", logging.ERROR, error=str(exc))
            return _status_response("Failed", "InternalError", "storage error")
        logs.log(log, "local_list_updated", update_type=payload.get("updateType"),
                 version=payload.get("versionNumber"), entries=self.list_entries())
        return _status_response("Accepted")

    def get_local_list_version(self) -> JsonDict:
        """GetLocalListVersionRequest -> GetLocalListVersionResponse."""
        if not self._settings().list_enabled:
            return {"versionNumber": 0}  # D02.FR.03
        return {"versionNumber": self._list_version()}  # D02.FR.02: 0 until a list is sent

    def list_entry(self, id_token: Mapping[str, Any]) -> ListEntry | None:
        row = self._db.execute(
            "SELECT id_token_info, expires_at FROM authorization_list WHERE token=? AND type=?",
            token_key(id_token)).fetchone()
        if row is None:
            return None
        return ListEntry(id_token_info=json.loads(row[0]), expires_at=row[1])

    def list_entries(self) -> int:
        """LocalAuthListCtrlr.Entries (Actual)."""
        return int(self._db.execute("SELECT COUNT(*) FROM authorization_list").fetchone()[0])

    def list_storage_used(self) -> int:
        """LocalAuthListCtrlr.Storage (Actual), in the bytes `entry_bytes` counts."""
        return int(self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM authorization_list").fetchone()[0])

    def _list_version(self) -> int:
        row = self._db.execute("SELECT version FROM authorization_list_version").fetchone()
        return 0 if row is None else int(row[0])

    def _apply_local_list(self, payload: Mapping[str, Any], settings: AuthSettings) -> None:
        if not settings.list_enabled:
            raise _ListRejectedError("Failed", "NotEnabled", "LocalAuthListCtrlr.Enabled is false")
        version = payload.get("versionNumber")
        update = payload.get("updateType")
        items = payload.get("localAuthorizationList") or []
        if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
            # D01.FR.18: 0 means "no list"; no update may claim it.
            raise _ListRejectedError("Failed", "InvalidValue", "versionNumber must be > 0")
        if update not in ("Full", "Differential"):
            raise _ListRejectedError(
                "Failed", "InvalidValue", "updateType must be Full or Differential")
        if update == "Differential" and version <= self._list_version():
            raise _ListRejectedError(
                "VersionMismatch", "InvalidValue",
                "Differential versionNumber must exceed the installed version")
        if len(items) > settings.list_items_per_message:
            raise _ListRejectedError(
                "Failed", "TooManyElements",
                f"more than ItemsPerMessage={settings.list_items_per_message}")
        if len(_dump(dict(payload)).encode()) > settings.list_bytes_per_message:
            raise _ListRejectedError(
                "Failed", "TooLargeElement",
                f"more than BytesPerMessage={settings.list_bytes_per_message}")
        changes = _list_changes(items, full=update == "Full")
        with transaction(self._db):
            if update == "Full":
                self._db.execute("DELETE FROM authorization_list")  # D01.FR.04, D01.FR.15
            for key, id_token, info, expires_at in changes:
                if info is None:
                    # D01.FR.17: a Differential entry without idTokenInfo removes the token.
                    self._db.execute("DELETE FROM authorization_list WHERE token=? AND type=?",
                                     key)
                else:
                    self._db.execute(
                        "INSERT INTO authorization_list"
                        " (token, type, id_token, id_token_info, expires_at, size)"
                        " VALUES (?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (token, type) DO UPDATE SET id_token=excluded.id_token,"
                        " id_token_info=excluded.id_token_info, expires_at=excluded.expires_at,"
                        " size=excluded.size",
                        (*key, _dump(id_token), _dump(info), expires_at,
                         entry_bytes(id_token, info)))  # D01.FR.16
            self._db.execute(
                "INSERT INTO authorization_list_version (id, version) VALUES (0, ?)"
                " ON CONFLICT (id) DO UPDATE SET version=excluded.version", (version,))
            if self.list_entries() > settings.list_max_entries:
                raise _ListRejectedError(
                    "Failed", "OutOfStorage",
                    f"more than Entries maxLimit={settings.list_max_entries}")
            if self.list_storage_used() > settings.list_storage_bytes:
                raise _ListRejectedError(
                    "Failed", "OutOfStorage",
                    f"more than Storage maxLimit={settings.list_storage_bytes}")

    # -- Authorization Cache (C10, C11, C12) --------------------------------------------------

    def clear_cache(self) -> JsonDict:
        """ClearCacheRequest -> ClearCacheResponse (C11): Rejected while the cache is disabled."""
        if not self._settings().cache_enabled:
            return _status_response("Rejected", "NotEnabled", "AuthCacheCtrlr.Enabled is false")
        try:
            self._db.execute("DELETE FROM authorization_cache")
        except sqlite3.Error as exc:
            logs.log(log, "cache_clear_failed", logging.ERROR, error=str(exc))
            return _status_response("Rejected", "InternalError", "storage error")
        logs.log(log, "cache_cleared")
        return _status_response("Accepted")

    def cache_entry(self, id_token: Mapping[str, Any]) -> CacheEntry | None:
        row = self._db.execute(
            "SELECT id_token_info, expires_at, last_used FROM authorization_cache"
            " WHERE token=? AND type=?", token_key(id_token)).fetchone()
        if row is None:
            return None
        return CacheEntry(id_token_info=json.loads(row[0]), expires_at=row[1], last_used=row[2])

    def cache_entries(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM authorization_cache").fetchone()[0])

    def cache_storage_used(self) -> int:
        """AuthCacheCtrlr.Storage (Actual), in the bytes `entry_bytes` counts."""
        return int(self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM authorization_cache").fetchone()[0])

    def purge_expired_cache(self, now: float) -> int:
        """Drop entries past cacheExpiryDateTime or LifeTime; returns how many went."""
        settings = self._settings()
        lifetime = settings.cache_lifetime_s
        cursor = self._db.execute(
            "DELETE FROM authorization_cache WHERE (expires_at IS NOT NULL AND expires_at <= ?)"
            " OR (? IS NOT NULL AND last_used < ? - ?)", (now, lifetime, now, lifetime))
        return cursor.rowcount

    def _cache_delete(self, id_token: Mapping[str, Any]) -> None:
        self._db.execute("DELETE FROM authorization_cache WHERE token=? AND type=?",
                         token_key(id_token))

    def _next_seq(self, column: str) -> int:
        row = self._db.execute(f"SELECT COALESCE(MAX({column}), 0) FROM authorization_cache")
        return int(row.fetchone()[0]) + 1

    def _cache_touch(self, id_token: Mapping[str, Any], now: float) -> None:
        self._db.execute(
            "UPDATE authorization_cache SET last_used=?, use_count=use_count+1, used_seq=?"
            " WHERE token=? AND type=?", (now, self._next_seq("used_seq"), *token_key(id_token)))

    def _cache_store(self, id_token: Mapping[str, Any], id_token_info: Mapping[str, Any],
                     now: float) -> None:
        settings = self._settings()
        if not settings.cache_enabled or id_token.get("type") in _LOCALLY_DECIDED_TYPES:
            return
        key = token_key(id_token)
        try:
            expires_at = _expiry(id_token_info)
        except ValueError:
            expires_at = now  # an expiry we cannot read is not one we can honour: do not cache
        size = entry_bytes(id_token, id_token_info)
        if (expires_at is not None and expires_at <= now) or size > settings.cache_storage_bytes:
            # Errata C10.FR.10 note: a cacheExpiryDateTime in the past keeps a token out of the
            # cache and removes the one there.
            self._cache_delete(id_token)
            return
        with transaction(self._db):
            self._db.execute(
                "INSERT INTO authorization_cache (token, type, id_token, id_token_info,"
                " expires_at, last_used, use_count, inserted_seq, used_seq, size)"
                " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
                " ON CONFLICT (token, type) DO UPDATE SET id_token=excluded.id_token,"
                " id_token_info=excluded.id_token_info, expires_at=excluded.expires_at,"
                " last_used=excluded.last_used, use_count=use_count+1,"
                " used_seq=excluded.used_seq, size=excluded.size",
                (*key, _dump(dict(id_token)), _dump(dict(id_token_info)), expires_at, now,
                 self._next_seq("inserted_seq"), self._next_seq("used_seq"), size))
            self.purge_expired_cache(now)
            self._evict(settings, key)

    def _evict(self, settings: AuthSettings, keep: tuple[str, str]) -> None:
        used = self.cache_storage_used()
        evicted = 0
        while used > settings.cache_storage_bytes:
            victim = self._db.execute(
                "SELECT token, type, size FROM authorization_cache"
                " WHERE NOT (token=? AND type=?)"
                f" ORDER BY {_EVICTION_ORDER[settings.cache_policy]} LIMIT 1", keep).fetchone()
            if victim is None:
                break
            self._db.execute("DELETE FROM authorization_cache WHERE token=? AND type=?",
                             (victim[0], victim[1]))
            used -= int(victim[2])
            evicted += 1
        if evicted:
            logs.log(log, "cache_evicted", count=evicted, policy=settings.cache_policy)


_ListChange = tuple[tuple[str, str], JsonDict, JsonDict | None, float | None]


def _list_changes(items: Any, *, full: bool) -> list[_ListChange]:
    """Validate the AuthorizationData of a SendLocalListRequest into rows to write."""
    if not isinstance(items, list):
        raise _ListRejectedError("Failed", "InvalidValue", "localAuthorizationList must be a list")
    changes: list[_ListChange] = []
    seen: set[tuple[str, str]] = set()
    for item in items:
        id_token = item.get("idToken") if isinstance(item, Mapping) else None
        if not isinstance(id_token, Mapping):
            raise _ListRejectedError("Failed", "InvalidValue", "an entry has no idToken")
        try:
            key = token_key(id_token)
        except ValueError as exc:
            raise _ListRejectedError("Failed", "InvalidValue", str(exc)) from None
        if key in seen:
            # D01.FR.06: every idToken in one list is unique.
            raise _ListRejectedError("Failed", "InvalidValue", "duplicate idToken in the list")
        seen.add(key)
        info = item.get("idTokenInfo")
        if info is None and full:
            raise _ListRejectedError(
                "Failed", "InvalidValue", "a Full list entry needs idTokenInfo")
        expires_at = None
        if info is not None:
            if not isinstance(info, Mapping) or "status" not in info:
                raise _ListRejectedError("Failed", "InvalidValue", "idTokenInfo needs a status")
            try:
                expires_at = _expiry(info)
            except ValueError:
                raise _ListRejectedError(
                    "Failed", "InvalidValue", "unreadable cacheExpiryDateTime") from None
            info = dict(info)
        changes.append((key, dict(id_token), info, expires_at))
    return changes
