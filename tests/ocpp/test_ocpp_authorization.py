"""Authorization: the decision table, the Local Authorization List (D01/D02), the cache (C10-C12),
persistence, and the responses checked against the OCPP 2.0.1 and 2.1 schemas."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.ocpp.authorization import (
    AuthDecision,
    Authorizer,
    AuthOutcome,
    AuthReason,
    AuthSettings,
    AuthSource,
    CacheEntry,
    CachePolicy,
    ListEntry,
    allowed_on_evse,
    csms_decision,
    decide,
    entry_bytes,
    parse_datetime,
    tokens_equal,
)
from firmware.ocpp.db import open_db
from hal.clock import iso

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SCHEMAS = Path(ocpp.__file__).parent
VERSIONS = ("v201", "v21")

A = "Accepted"
OC, F = AuthOutcome, AuthSource
R = AuthReason


def tok(value: str = "04A1B2C3", kind: str = "ISO14443") -> dict[str, Any]:
    return {"idToken": value, "type": kind}


def validator(version: str, message: str) -> Any:
    schema = json.loads((SCHEMAS / version / "schemas" / f"{message}.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def assert_valid(message: str, payload: dict[str, Any]) -> None:
    for version in VERSIONS:
        validator(version, message).validate(payload)


class Knobs:
    """Device-model stand-in: tests change `settings` between calls."""

    def __init__(self, **changes: Any) -> None:
        self.settings = AuthSettings(**changes)

    def __call__(self) -> AuthSettings:
        return self.settings

    def set(self, **changes: Any) -> None:
        self.settings = replace(self.settings, **changes)


def make(path: str | Path = ":memory:", **changes: Any) -> tuple[Authorizer, Knobs]:
    knobs = Knobs(**changes)
    return Authorizer(open_db(path), knobs), knobs


def full(version: int, *entries: tuple[dict[str, Any], dict[str, Any] | None]) -> dict[str, Any]:
    return _list_request("Full", version, entries)


def diff(version: int, *entries: tuple[dict[str, Any], dict[str, Any] | None]) -> dict[str, Any]:
    return _list_request("Differential", version, entries)


def _list_request(update: str, version: int,
                  entries: tuple[tuple[dict[str, Any], dict[str, Any] | None], ...]
                  ) -> dict[str, Any]:
    payload: dict[str, Any] = {"versionNumber": version, "updateType": update}
    if entries:
        payload["localAuthorizationList"] = [
            {"idToken": t} if info is None else {"idToken": t, "idTokenInfo": info}
            for t, info in entries]
    return payload


# -- decide: one row per rule ------------------------------------------------------------------

def lst(status: str, **extra: Any) -> ListEntry:
    info = {"status": status, **extra}
    expiry = extra.get("cacheExpiryDateTime")
    return ListEntry(id_token_info=info,
                     expires_at=None if expiry is None else parse_datetime(expiry))


def cch(status: str, *, last_used: float = NOW, expires_at: float | None = None,
        **extra: Any) -> CacheEntry:
    return CacheEntry(id_token_info={"status": status, **extra}, expires_at=expires_at,
                      last_used=last_used)


@dataclass(frozen=True)
class Row:
    name: str
    online: bool
    expect: tuple[AuthOutcome, AuthSource, AuthReason]
    list_entry: ListEntry | None = None
    cache_entry: CacheEntry | None = None
    settings: dict[str, Any] | None = None
    kind: str = "ISO14443"
    evse_id: int | None = None


PAST = iso(NOW - 1)
ROWS = [
    # Free charging and tokens that never need a lookup.
    Row("free charging accepts anything offline", False, (OC.ACCEPT, F.FREE, R.ACCEPTED),
        list_entry=lst("Blocked"), settings={"enabled": False}),
    Row("free charging accepts online without asking", True, (OC.ACCEPT, F.FREE, R.ACCEPTED),
        settings={"enabled": False}),
    Row("NoAuthorization token", True, (OC.ACCEPT, F.NO_AUTHORIZATION_TOKEN, R.ACCEPTED),
        kind="NoAuthorization"),
    Row("Central token online (C05.FR.01)", True, (OC.ACCEPT, F.CENTRAL_TOKEN, R.ACCEPTED),
        kind="Central"),
    Row("Central token offline", False, (OC.ACCEPT, F.CENTRAL_TOKEN, R.ACCEPTED), kind="Central"),
    # Online, nothing known locally.
    Row("online unknown: ask (C01)", True, (OC.ASK_CSMS, F.CSMS, R.NOT_FOUND_LOCALLY)),
    Row("online unknown, remote authorization disabled", True,
        (OC.REJECT, F.UNKNOWN, R.REMOTE_AUTHORIZATION_DISABLED),
        settings={"disable_remote_authorization": True}),
    # Online, local list.
    Row("online list Accepted, LocalPreAuthorize (C14.FR.02)", True,
        (OC.ACCEPT, F.LOCAL_LIST, R.ACCEPTED), list_entry=lst(A)),
    Row("online list Accepted, no LocalPreAuthorize: ask", True,
        (OC.ASK_CSMS, F.CSMS, R.LOCAL_PRE_AUTHORIZE_DISABLED), list_entry=lst(A),
        settings={"local_pre_authorize": False}),
    Row("online list Accepted, remote disabled: list is final", True,
        (OC.ACCEPT, F.LOCAL_LIST, R.ACCEPTED), list_entry=lst(A),
        settings={"local_pre_authorize": False, "disable_remote_authorization": True}),
    Row("online list Blocked: ask again (C14.FR.03)", True,
        (OC.ASK_CSMS, F.CSMS, R.LOCAL_STATUS_NOT_ACCEPTED), list_entry=lst("Blocked")),
    Row("online list Blocked, list DisablePostAuthorize", True,
        (OC.REJECT, F.LOCAL_LIST, R.BLOCKED), list_entry=lst("Blocked"),
        settings={"list_disable_post_authorize": True}),
    Row("online list Blocked, remote disabled", True, (OC.REJECT, F.LOCAL_LIST, R.BLOCKED),
        list_entry=lst("Blocked"), settings={"disable_remote_authorization": True}),
    Row("online list Blocked wins over cache Accepted", True,
        (OC.ASK_CSMS, F.CSMS, R.LOCAL_STATUS_NOT_ACCEPTED), list_entry=lst("Blocked"),
        cache_entry=cch(A)),
    Row("online list entry past its expiry counts as Expired", True,
        (OC.REJECT, F.LOCAL_LIST, R.EXPIRED), list_entry=lst(A, cacheExpiryDateTime=PAST),
        settings={"list_disable_post_authorize": True}),
    Row("online disabled list is not used", True, (OC.ASK_CSMS, F.CSMS, R.NOT_FOUND_LOCALLY),
        list_entry=lst(A), settings={"list_enabled": False}),
    # Online, cache.
    Row("online cache Accepted, LocalPreAuthorize (C12)", True, (OC.ACCEPT, F.CACHE, R.ACCEPTED),
        cache_entry=cch(A)),
    Row("online cache Invalid: ask again (C10.FR.03, C12.FR.05)", True,
        (OC.ASK_CSMS, F.CSMS, R.LOCAL_STATUS_NOT_ACCEPTED), cache_entry=cch("Invalid")),
    Row("online cache Invalid, cache DisablePostAuthorize", True, (OC.REJECT, F.CACHE, R.INVALID),
        cache_entry=cch("Invalid"), settings={"cache_disable_post_authorize": True}),
    Row("online cache past LifeTime is not used (C10.FR.10)", True,
        (OC.ASK_CSMS, F.CSMS, R.NOT_FOUND_LOCALLY), cache_entry=cch(A, last_used=NOW - 101),
        settings={"cache_lifetime_s": 100}),
    Row("online cache within LifeTime", True, (OC.ACCEPT, F.CACHE, R.ACCEPTED),
        cache_entry=cch(A, last_used=NOW - 100), settings={"cache_lifetime_s": 100}),
    Row("online cache past cacheExpiryDateTime is not used (C10.FR.13)", True,
        (OC.ASK_CSMS, F.CSMS, R.NOT_FOUND_LOCALLY), cache_entry=cch(A, expires_at=NOW)),
    Row("online disabled cache is not used", True, (OC.ASK_CSMS, F.CSMS, R.NOT_FOUND_LOCALLY),
        cache_entry=cch(A), settings={"cache_enabled": False}),
    # Offline.
    Row("offline list Accepted, LocalAuthorizeOffline (C13.FR.02)", False,
        (OC.ACCEPT, F.LOCAL_LIST, R.ACCEPTED), list_entry=lst(A),
        settings={"local_pre_authorize": False}),
    Row("offline list Accepted wins over cache Blocked", False,
        (OC.ACCEPT, F.LOCAL_LIST, R.ACCEPTED), list_entry=lst(A), cache_entry=cch("Blocked")),
    Row("offline list Accepted, no LocalAuthorizeOffline", False,
        (OC.REJECT, F.UNKNOWN, R.LOCAL_AUTHORIZE_OFFLINE_DISABLED), list_entry=lst(A),
        settings={"local_authorize_offline": False}),
    Row("offline list Accepted, no LocalAuthorizeOffline, unknown ids allowed", False,
        (OC.ACCEPT, F.OFFLINE_UNKNOWN, R.ACCEPTED), list_entry=lst(A),
        settings={"local_authorize_offline": False, "offline_tx_for_unknown_id": True}),
    Row("offline list Blocked is never 'unknown' (C13.FR.04)", False,
        (OC.REJECT, F.LOCAL_LIST, R.BLOCKED), list_entry=lst("Blocked"),
        settings={"offline_tx_for_unknown_id": True}),
    Row("offline list with a status we do not know", False, (OC.REJECT, F.LOCAL_LIST, R.INVALID),
        list_entry=lst("Whatever")),
    Row("offline cache Accepted", False, (OC.ACCEPT, F.CACHE, R.ACCEPTED), cache_entry=cch(A)),
    Row("offline cache NotAtThisLocation", False, (OC.REJECT, F.CACHE, R.NOT_AT_THIS_LOCATION),
        cache_entry=cch("NotAtThisLocation"), settings={"offline_tx_for_unknown_id": True}),
    Row("offline cache expired, unknown ids refused", False,
        (OC.REJECT, F.UNKNOWN, R.UNKNOWN_OFFLINE), cache_entry=cch(A, expires_at=NOW - 5)),
    Row("offline cache expired, unknown ids allowed (C15)", False,
        (OC.ACCEPT, F.OFFLINE_UNKNOWN, R.ACCEPTED), cache_entry=cch(A, expires_at=NOW - 5),
        settings={"offline_tx_for_unknown_id": True}),
    Row("offline unknown refused", False, (OC.REJECT, F.UNKNOWN, R.UNKNOWN_OFFLINE)),
    Row("offline unknown allowed (C15)", False, (OC.ACCEPT, F.OFFLINE_UNKNOWN, R.ACCEPTED),
        settings={"offline_tx_for_unknown_id": True}),
    # idTokenInfo.evseId.
    Row("list Accepted for another EVSE", True, (OC.REJECT, F.LOCAL_LIST, R.EVSE_NOT_ALLOWED),
        list_entry=lst(A, evseId=[2]), evse_id=1),
    Row("list Accepted for this EVSE", True, (OC.ACCEPT, F.LOCAL_LIST, R.ACCEPTED),
        list_entry=lst(A, evseId=[2]), evse_id=2),
    Row("EVSE not known yet", False, (OC.ACCEPT, F.CACHE, R.ACCEPTED),
        cache_entry=cch(A, evseId=[2])),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_decide(row: Row) -> None:
    settings = AuthSettings(**(row.settings or {}))
    got = decide(tok(kind=row.kind), online=row.online, settings=settings,
                 list_entry=row.list_entry, cache_entry=row.cache_entry, now=NOW,
                 evse_id=row.evse_id)
    assert (got.outcome, got.source, got.reason) == row.expect
    if got.source in (F.LOCAL_LIST, F.CACHE):
        assert got.id_token_info is not None
    if got.outcome is OC.ASK_CSMS:
        assert got.id_token_info is None


def test_decide_reports_the_expired_list_status() -> None:
    got = decide(tok(), online=False, settings=AuthSettings(),
                 list_entry=lst(A, cacheExpiryDateTime=PAST), cache_entry=None, now=NOW)
    assert got.reason is R.EXPIRED
    assert got.id_token_info == {"status": "Expired", "cacheExpiryDateTime": PAST}


def test_csms_decision() -> None:
    assert csms_decision({"status": A}) == AuthDecision(
        outcome=OC.ACCEPT, source=F.CSMS, id_token_info={"status": A}, reason=R.ACCEPTED)
    assert csms_decision({"status": "NoCredit"}).reason is R.NO_CREDIT
    assert csms_decision({"status": A, "evseId": [1]}, evse_id=2).reason is R.EVSE_NOT_ALLOWED
    assert csms_decision({"status": A, "evseId": [1]}, evse_id=1).accepted


def test_token_identity() -> None:
    assert tokens_equal(tok("abc"), {"idToken": "ABC", "type": "ISO14443",
                                     "additionalInfo": [{"additionalIdToken": "x", "type": "y"}]})
    assert not tokens_equal(tok("abc"), tok("abc", "ISO15693"))
    assert allowed_on_evse({"status": A}, 3)
    assert not allowed_on_evse({"status": A, "evseId": [1, 2]}, 3)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-01T00:00:00Z", NOW),
    ("2026-01-01T00:00:00.5z", NOW + 0.5),
    ("2026-01-01T01:00:00+01:00", NOW),
    ("2026-01-01T00:00:00.123456789Z", NOW + 0.123456),
    ("2026-01-01T00:00:00", NOW),
])
def test_parse_datetime(text: str, expected: float) -> None:
    assert parse_datetime(text) == pytest.approx(expected)


@pytest.mark.parametrize("changes", [
    {"cache_lifetime_s": -1}, {"cache_storage_bytes": -1}, {"list_max_entries": -1},
    {"list_items_per_message": -1}, {"cache_policy": "LRU"},
])
def test_settings_are_validated(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"cache_|list_"):
        AuthSettings(**changes)


# -- Local Authorization List (D01, D02) ---------------------------------------------------------

T1, T2, T3 = tok("123"), tok("124"), tok("125")
OK, BLOCKED = {"status": A}, {"status": "Blocked"}


def test_d01_d02_list_management() -> None:
    auth, knobs = make()
    responses: list[tuple[str, dict[str, Any]]] = []

    def send(payload: dict[str, Any]) -> str:
        assert_valid("SendLocalListRequest", payload)
        response = auth.send_local_list(payload)
        responses.append(("SendLocalListResponse", response))
        return str(response["status"])

    def version() -> int:
        response = auth.get_local_list_version()
        responses.append(("GetLocalListVersionResponse", response))
        return int(response["versionNumber"])

    assert (version(), auth.list_entries()) == (0, 0)  # D02.FR.02
    assert send(full(0)) == "Failed"  # D01.FR.18
    assert send(diff(0)) == "Failed"
    assert send(full(10, (T1, OK), (T2, OK))) == "Accepted"
    assert (version(), auth.list_entries()) == (10, 2)
    assert send(full(20)) == "Accepted"  # D01.FR.04: an empty Full list empties it
    assert (version(), auth.list_entries()) == (20, 0)
    assert send(full(12, (T1, OK), (T2, OK), (T3, BLOCKED))) == "Accepted"  # Full may go down
    assert (version(), auth.list_entries()) == (12, 3)
    assert send(diff(15)) == "Accepted"  # D01.FR.05: only the version changes
    assert (version(), auth.list_entries()) == (15, 3)
    assert send(full(25, (T1, OK), (T2, OK), (T2, OK))) == "Failed"  # D01.FR.06: duplicates
    assert send(full(25, (T1, OK), (tok("123"), BLOCKED))) == "Failed"
    assert send(full(3, (T1, OK), (T2, None))) == "Failed"  # a Full entry needs idTokenInfo
    assert (version(), auth.list_entries()) == (15, 3)
    assert send(full(25, (T1, OK), (T2, OK))) == "Accepted"
    assert send(diff(26, (T1, BLOCKED))) == "Accepted"  # D01.FR.16: update
    assert auth.list_entry(T1) == ListEntry(id_token_info=BLOCKED, expires_at=None)
    assert send(diff(27, (T3, OK))) == "Accepted"  # D01.FR.16: add
    assert auth.list_entries() == 3
    assert send(diff(28, (T1, None), (tok("nobody"), None))) == "Accepted"  # D01.FR.17
    assert (version(), auth.list_entries()) == (28, 2)
    assert auth.list_entry(T1) is None
    assert send(diff(27, (T3, None))) == "VersionMismatch"  # D01.FR.19
    assert send(diff(28, (T3, None))) == "VersionMismatch"
    assert (version(), auth.list_entries()) == (28, 2)

    knobs.set(list_enabled=False)
    assert version() == 0  # D02.FR.03
    assert send(full(30, (T1, OK))) == "Failed"
    knobs.set(list_enabled=True)
    assert version() == 28  # the installed list was kept

    for message, response in responses:
        assert_valid(message, response)
    failed = [r for m, r in responses if m == "SendLocalListResponse" and r["status"] != A]
    assert all("reasonCode" in r["statusInfo"] for r in failed)


def test_list_limits_fail_whole_updates() -> None:
    auth, knobs = make(list_items_per_message=3, list_max_entries=4)
    assert auth.send_local_list(full(1, (tok("a"), OK), (tok("b"), OK), (tok("c"), OK))) == {
        "status": A}
    too_many = auth.send_local_list(full(2, *[(tok(str(i)), OK) for i in range(4)]))
    assert too_many["statusInfo"]["reasonCode"] == "TooManyElements"
    assert auth.send_local_list(diff(2, (tok("d"), OK)))["status"] == A
    overflow = auth.send_local_list(diff(3, (tok("e"), OK)))
    assert (overflow["status"], overflow["statusInfo"]["reasonCode"]) == ("Failed",
                                                                         "OutOfStorage")
    # Rolled back as a whole: the version and the entries are those of the last good update.
    assert (auth.get_local_list_version(), auth.list_entries()) == ({"versionNumber": 2}, 4)
    assert auth.send_local_list(diff(3, (tok("a"), None), (tok("e"), OK)))["status"] == A

    size = entry_bytes(tok("a"), OK)
    knobs.set(list_storage_bytes=size * 4 - 1)
    assert auth.send_local_list(diff(4, (tok("f"), None)))["statusInfo"]["reasonCode"] == (
        "OutOfStorage")
    knobs.set(list_storage_bytes=10**6, list_bytes_per_message=50)
    big = auth.send_local_list(diff(4, (tok("g" * 40), OK)))
    assert big["statusInfo"]["reasonCode"] == "TooLargeElement"
    bad_date = auth.send_local_list(diff(4, (tok("g"), {"status": A,
                                                       "cacheExpiryDateTime": "soon"})))
    assert bad_date["status"] == "Failed"
    assert auth.list_storage_used() == 4 * size
    for response in (too_many, overflow, big, bad_date):
        assert_valid("SendLocalListResponse", response)


def test_list_matches_case_insensitively_by_value_and_type() -> None:
    auth, _ = make()
    auth.send_local_list(full(1, (tok("AbCd"), OK)))
    assert auth.decide(tok("abcd"), online=False, now=NOW).source is F.LOCAL_LIST
    assert auth.decide(tok("abcd", "ISO15693"), online=False, now=NOW).source is F.UNKNOWN


@dataclass
class ListModel:
    version: int = 0
    entries: dict[tuple[str, str], dict[str, Any]] | None = None

    def apply(self, payload: dict[str, Any], max_items: int, max_entries: int) -> str:
        entries = dict(self.entries or {})
        items = payload.get("localAuthorizationList", [])
        keys = [(i["idToken"]["idToken"].casefold(), i["idToken"]["type"]) for i in items]
        update, version = payload["updateType"], payload["versionNumber"]
        if version <= 0:
            return "Failed"
        if update == "Differential" and version <= self.version:
            return "VersionMismatch"
        if len(items) > max_items or len(set(keys)) < len(keys):
            return "Failed"
        if update == "Full":
            if any("idTokenInfo" not in i for i in items):
                return "Failed"
            entries = {}
        for key, item in zip(keys, items, strict=True):
            if "idTokenInfo" in item:
                entries[key] = item["idTokenInfo"]
            else:
                entries.pop(key, None)
        if len(entries) > max_entries:
            return "Failed"
        self.version, self.entries = version, entries
        return "Accepted"


ALPHABET = [tok("a"), tok("A"), tok("b"), tok("b", "ISO15693"), tok("c"), tok("d", "Central")]
INFOS = [OK, BLOCKED, {"status": "Expired"}]
item_strategy = st.tuples(st.sampled_from(ALPHABET), st.one_of(st.none(), st.sampled_from(INFOS)))
update_strategy = st.builds(
    lambda update, version, items: _list_request(update, version, tuple(items)),
    st.sampled_from(["Full", "Differential"]), st.integers(-1, 12),
    st.lists(item_strategy, max_size=5))


@given(st.lists(update_strategy, max_size=12))
def test_list_updates_match_a_model(updates: list[dict[str, Any]]) -> None:
    auth, _ = make(list_items_per_message=4, list_max_entries=3)
    model = ListModel()
    for payload in updates:
        assert auth.send_local_list(payload)["status"] == model.apply(payload, 4, 3)
        assert auth.get_local_list_version() == {"versionNumber": model.version}
        entries = model.entries or {}
        assert auth.list_entries() == len(entries)
        for token in ALPHABET:
            entry = auth.list_entry(token)
            expected = entries.get((token["idToken"].casefold(), token["type"]))
            assert (entry.id_token_info if entry else None) == expected


# -- Authorization Cache (C10, C11, C12) ---------------------------------------------------------

def test_cache_fills_from_responses_and_answers_later() -> None:
    auth, _ = make()
    assert auth.decide(T1, online=True, now=NOW).outcome is OC.ASK_CSMS
    verdict = auth.on_authorize_response(T1, {"status": A, "language1": "nl"}, NOW)
    assert verdict.accepted
    assert auth.decide(T1, online=True, now=NOW + 1) == AuthDecision(
        outcome=OC.ACCEPT, source=F.CACHE, id_token_info={"status": A, "language1": "nl"},
        reason=R.ACCEPTED)
    # A TransactionEventResponse with a new status replaces the cached one.
    assert not auth.on_transaction_response(T1, {"status": "Blocked"}, NOW + 2).accepted
    assert auth.decide(T1, online=False, now=NOW + 3).reason is R.BLOCKED
    assert auth.cache_entries() == 1


def test_cache_keeps_out_what_it_should() -> None:
    auth, knobs = make()
    auth.on_authorize_response(T1, {"status": A}, NOW)
    # Errata C10.FR.10 note: an expiry in the past removes the entry and keeps it out.
    auth.on_authorize_response(T1, {"status": A, "cacheExpiryDateTime": iso(NOW)}, NOW)
    auth.on_authorize_response(T2, {"status": A, "cacheExpiryDateTime": "later"}, NOW)
    auth.on_transaction_response(tok("x", "Central"), {"status": A}, NOW)
    auth.on_transaction_response(tok("", "NoAuthorization"), {"status": A}, NOW)
    auth.on_authorize_response(T3, {"status": A, "personalMessage": {
        "format": "UTF8", "content": "x" * 500}}, NOW)
    knobs.set(cache_storage_bytes=200)
    auth.on_authorize_response(T3, {"status": A, "personalMessage": {
        "format": "UTF8", "content": "x" * 500}}, NOW)
    assert auth.cache_entries() == 0
    knobs.set(cache_enabled=False)
    auth.on_authorize_response(T1, {"status": A}, NOW)
    assert auth.cache_entries() == 0


def test_cache_lifetime_counts_from_last_use() -> None:
    auth, _ = make(cache_lifetime_s=100)
    auth.on_authorize_response(T1, OK, NOW)
    assert auth.decide(T1, online=True, now=NOW + 60).source is F.CACHE
    assert auth.decide(T1, online=True, now=NOW + 150).source is F.CACHE  # 90 s after last use
    assert auth.decide(T1, online=True, now=NOW + 251).outcome is OC.ASK_CSMS
    assert auth.cache_entries() == 0  # C10.FR.10: removed


def test_cache_expiry_date_time_ends_an_entry() -> None:
    auth, _ = make()
    auth.on_authorize_response(T1, {"status": A, "cacheExpiryDateTime": iso(NOW + 60)}, NOW)
    assert auth.decide(T1, online=False, now=NOW + 59).source is F.CACHE
    assert auth.decide(T1, online=False, now=NOW + 61).reason is R.UNKNOWN_OFFLINE
    assert auth.cache_entries() == 0


def test_purge_expired_cache() -> None:
    auth, _ = make(cache_lifetime_s=100)
    auth.on_authorize_response(T1, OK, NOW)
    auth.on_authorize_response(T2, {"status": A, "cacheExpiryDateTime": iso(NOW + 110)}, NOW + 50)
    auth.on_authorize_response(T3, OK, NOW + 90)
    assert auth.purge_expired_cache(NOW + 120) == 2
    assert auth.cache_entry(T3) is not None


def _fill_three(policy: CachePolicy) -> Authorizer:
    size = entry_bytes(tok("t1"), OK)
    auth, _ = make(cache_policy=policy, cache_storage_bytes=3 * size)
    for i, name in enumerate(("t1", "t2", "t3")):
        auth.on_authorize_response(tok(name), OK, NOW + i)
    return auth


def _cached(auth: Authorizer) -> set[str]:
    return {name for name in ("t1", "t2", "t3", "t4") if auth.cache_entry(tok(name))}


def test_lru_evicts_the_least_recently_used() -> None:
    auth = _fill_three(CachePolicy.LRU)
    assert auth.decide(tok("t1"), online=True, now=NOW + 10).source is F.CACHE
    auth.on_authorize_response(tok("t4"), OK, NOW + 11)
    assert _cached(auth) == {"t1", "t3", "t4"}
    assert auth.cache_storage_used() <= 3 * entry_bytes(tok("t1"), OK)


def test_lfu_evicts_the_least_frequently_used() -> None:
    auth = _fill_three(CachePolicy.LFU)
    for when in (10, 11):
        auth.decide(tok("t1"), online=True, now=NOW + when)
    auth.decide(tok("t3"), online=True, now=NOW + 12)
    auth.on_authorize_response(tok("t4"), OK, NOW + 13)
    assert _cached(auth) == {"t1", "t3", "t4"}


def test_fifo_evicts_the_oldest_insert() -> None:
    auth = _fill_three(CachePolicy.FIFO)
    auth.decide(tok("t1"), online=True, now=NOW + 10)
    auth.on_authorize_response(tok("t1"), OK, NOW + 11)  # an update is not a new insert
    auth.on_authorize_response(tok("t4"), OK, NOW + 12)
    assert _cached(auth) == {"t2", "t3", "t4"}


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7)), min_size=1, max_size=40))
def test_lru_keeps_the_most_recently_used(ops: list[tuple[bool, int]]) -> None:
    """Responses insert, accepted cache hits use; the cache holds the 3 most recent."""
    size = entry_bytes(tok("t0"), OK)
    auth, _ = make(cache_storage_bytes=3 * size)
    recent: list[int] = []
    for step, (insert, n) in enumerate(ops):
        now = NOW + step
        if insert:
            auth.on_authorize_response(tok(f"t{n}"), OK, now)
        elif auth.decide(tok(f"t{n}"), online=True, now=now).source is not F.CACHE:
            continue
        recent = [*[m for m in recent if m != n], n][-3:]
        assert {m for m in range(8) if auth.cache_entry(tok(f"t{m}"))} == set(recent)


def test_clear_cache() -> None:
    auth, knobs = make()
    auth.on_authorize_response(T1, OK, NOW)
    response = auth.clear_cache()
    assert response == {"status": A}
    assert auth.cache_entries() == 0
    knobs.set(cache_enabled=False)
    rejected = auth.clear_cache()
    assert rejected["status"] == "Rejected"
    for payload in (response, rejected):
        assert_valid("ClearCacheResponse", payload)
    assert_valid("ClearCacheRequest", {})
    assert_valid("GetLocalListVersionRequest", {})


# -- persistence -------------------------------------------------------------------------------

def test_list_and_cache_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.db"
    auth, _ = make(path, cache_policy=CachePolicy.LRU)
    assert auth.send_local_list(full(7, (T1, OK), (T2, BLOCKED)))["status"] == A
    auth.on_authorize_response(T3, {"status": A, "cacheExpiryDateTime": iso(NOW + 600)}, NOW)
    del auth

    again, _ = make(path)
    assert again.get_local_list_version() == {"versionNumber": 7}
    assert (again.list_entries(), again.cache_entries()) == (2, 1)
    assert again.decide(T1, online=False, now=NOW).source is F.LOCAL_LIST
    assert again.decide(T2, online=False, now=NOW).reason is R.BLOCKED
    assert again.decide(T3, online=False, now=NOW + 1).source is F.CACHE
    assert again.decide(T3, online=False, now=NOW + 601).reason is R.UNKNOWN_OFFLINE
    assert again.send_local_list(diff(7, (T1, None)))["status"] == "VersionMismatch"
