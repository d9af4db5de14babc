"""The charging station: one OCPP 2.1 / 2.0.1 connection to the CSMS and everything behind it.

What it owns: the link (reconnecting websocket), the boot sequence, heartbeats, delivery from the
durable queue, and the wiring of every module that answers the CSMS (handlers.py routes the
requests). What it does not own: the safety loop. It reaches the charger only through the
connector's authorize() and the limit port, like every other adapter, so a CSMS can lower or
stop charging but never bypass a safety rule, and an exception in here cannot leave the
contactor closed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import websockets
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from firmware import logs
from firmware.core.limits import Limit, LimitClass, LimitSource
from firmware.evse.connector import Connector
from firmware.evse.limit_port import LimitPort
from firmware.ocpp import smart_charging as sc
from firmware.ocpp.authorization import (
    Authorizer,
    AuthOutcome,
    AuthSettings,
    CachePolicy,
    tokens_equal,
)
from firmware.ocpp.certificates import CertificateStore, CertificateType, CertificateUse
from firmware.ocpp.connection import (
    BackoffSettings,
    Connected,
    ConnectError,
    ConnectionConfig,
    Link,
    LinkState,
)
from firmware.ocpp.db import open_db, transaction
from firmware.ocpp.der import DerControls, GridSettings, active_grid_settings
from firmware.ocpp.device_model import Change, DeviceModel, VarKey, never_lower
from firmware.ocpp.device_model_vars import AUTH, COMM, SEC, declarations, station_overrides
from firmware.ocpp.evse import OcppEvse
from firmware.ocpp.firmware_update import CertCheck, FirmwareUpdater, SlotInstaller
from firmware.ocpp.handlers import handlers_for
from firmware.ocpp.log_upload import LogUploader
from firmware.ocpp.profile_store import ProfileStore
from firmware.ocpp.queue import MessageQueue, QueuedMessage, SendOutcome
from firmware.ocpp.rpc import CallTimeoutError, OcppCallError, Payload, Rpc, check_request
from firmware.ocpp.security import (
    SecurityEvent,
    SignRetry,
    StationSecurity,
    is_critical,
    log_security_event,
    next_resend_at,
    renewal_due,
    resent,
    security_event_notification,
)
from firmware.ocpp.settings import OcppSettings
from firmware.ocpp.tasks import Tasks
from firmware.ocpp.transactions import Tx
from hal.board import Board
from hal.clock import Clock, iso

# websockets at DEBUG logs every header (Authorization: Basic …) and frame: never below INFO.
logging.getLogger("websockets").setLevel(logging.INFO)

_OCPP_SOURCES = (LimitSource.OCPP_STATION_MAX, LimitSource.OCPP_EXTERNAL, LimitSource.OCPP_TX,
                 LimitSource.OCPP_TX_DEFAULT)

# Who limits charging when it is not the CSMS (NotifyChargingLimit, K12): the grid operator's
# limits are "SO", the energy manager's "EMS". Our own protection (safety class) is not a
# charging limit in the OCPP sense and is not reported.
_LIMIT_SOURCE_NAME = {LimitClass.GRID: "SO", LimitClass.OPTIMISATION: "EMS",
                      LimitClass.TARIFF: "EMS"}



class Station:
    def __init__(self, settings: OcppSettings, *, board: Board, connector: Connector,
                 limits: LimitPort, clock: Clock, data_dir: Path, log_file: Path,
                 request_restart: Callable[[str], None]) -> None:
        self.settings = settings
        self.board = board
        self.connector = connector
        self.limits = limits
        self.clock = clock
        self.data_dir = data_dir
        self.request_restart = request_restart
        self.log = logs.get("ocpp.station")
        self.db = open_db(data_dir / "ocpp.db")
        self.db.execute("CREATE TABLE IF NOT EXISTS station_meta (key TEXT PRIMARY KEY, "
                        "value TEXT NOT NULL)")
        self.dm = DeviceModel(self.db, declarations(), self._overrides())
        self.dm.add_validator(SEC, "SecurityProfile", never_lower)
        self.dm.add_validator(SEC, "SecurityProfile", self._profile_reachable)
        self.dm.add_source("ClockCtrlr", "DateTime", lambda: iso(clock.now()))
        self.dm.subscribe(self._on_variable_changed)
        self.queue = MessageQueue(self.db)
        self.auth = Authorizer(self.db, self._auth_settings)
        self.profiles = ProfileStore(self.db)
        self.certs = CertificateStore(self.db, data_dir / "certs")
        self.security = StationSecurity(self.certs)
        self._seed_csms_roots()
        self.der = DerControls(self.db, capable=board.ratings.bidirectional)
        self.grid_settings: GridSettings | None = None
        self.allowed_energy_transfer: tuple[str, ...] = ()
        self.evse = OcppEvse(1, connector, self.db, self.dm, self, clock)
        self.firmware = FirmwareUpdater(
            work_dir=data_dir / "firmware", clock=clock, sleep=asyncio.sleep,
            installer=SlotInstaller(data_dir / "firmware"), notify=self._firmware_status,
            security_event=self._security_event_text, is_idle=lambda: self.evse.tx is None,
            reboot=self._reboot_for_firmware,
            verify_signing_certificate=lambda pem: CertCheck.VALID
            if self.certs.verify_firmware_signer(pem, clock.now()) else CertCheck.INVALID)
        self.uploads = LogUploader(log_file=log_file, security_log_file=None,
                                   clock=clock, sleep=asyncio.sleep, notify=self._log_status,
                                   work_dir=data_dir / "uploads")
        self.rpc: Rpc | None = None
        self.accepted = False
        self.reset_pending: str | None = None
        self._wake = asyncio.Event()
        self._link: Link | None = None
        self._tasks = Tasks(self.log)
        self._limit_timer: asyncio.TimerHandle | None = None
        self._external_limit: str | None = None
        self._last_tx: str | None = None
        self._pending_tx_profile: Payload | None = None
        self._last_offline_event: SecurityEvent | None = None
        self.evse.tx_listeners.append(self._on_tx_changed)

    # ---- configuration -------------------------------------------------------------------

    def _overrides(self) -> dict[VarKey, Any]:
        s, r = self.settings, self.board.ratings
        values: dict[VarKey, Any] = dict(station_overrides(
            identity=s.identity, vendor=s.vendor, model=s.model, serial=s.serial_number,
            phases=r.phases, max_power_w=r.max_current_a * r.phases * r.nominal_voltage_v,
            tethered=self.board.connector.cable == "tethered"))
        values[VarKey(SEC, "OrganizationName")] = s.organization
        values[VarKey(SEC, "SecurityProfile")] = str(s.security_profile)
        if s.password is not None:
            values[VarKey(SEC, "BasicAuthPassword")] = s.password
        return values

    def _profile_reachable(self, new: str, _old: str | None) -> str | None:
        """A05: refuse a profile the station could not connect with (it would lock itself
        out): TLS needs a wss:// CSMS and a trusted root, profile 3 a client certificate."""
        profile = int(new)
        tls = self.certs.tls_material()
        if profile >= 2 and not self.settings.csms_url.startswith("wss://"):
            return "NoTLS"
        if profile >= 2 and tls.ca_file is None and self.settings.ca_file is None:
            return "NoCsmsRoot"
        if profile == 3 and tls.client_cert_file is None and (
                self.settings.client_cert_file is None):
            return "NoClientCert"
        return None

    def _seed_csms_roots(self) -> None:
        """The CSMS root(s) of the settings file go into the certificate store on first start,
        so the store is the one trust list: it verifies the server, checks a renewed station
        certificate's chain (A02), and the CSMS can replace it with InstallCertificate (M05)."""
        path = self.settings.ca_file
        if path is None or self.certs.roots(CertificateType.CSMS_ROOT):
            return
        for cert in x509.load_pem_x509_certificates(path.read_bytes()):
            pem = cert.public_bytes(Encoding.PEM).decode()
            answer = self.certs.install_certificate(
                {"certificateType": CertificateType.CSMS_ROOT.value, "certificate": pem},
                self.clock.now())
            logs.log(self.log, "csms_root_from_settings", status=answer["status"])

    def _auth_settings(self) -> AuthSettings:
        dm = self.dm
        return AuthSettings(
            enabled=dm.get_bool(AUTH, "Enabled"),
            local_pre_authorize=dm.get_bool(AUTH, "LocalPreAuthorize"),
            local_authorize_offline=dm.get_bool(AUTH, "LocalAuthorizeOffline"),
            offline_tx_for_unknown_id=dm.get_bool(AUTH, "OfflineTxForUnknownIdEnabled"),
            disable_remote_authorization=dm.get_bool(AUTH, "DisableRemoteAuthorization"),
            cache_enabled=dm.get_bool("AuthCacheCtrlr", "Enabled"),
            cache_lifetime_s=dm.get_int("AuthCacheCtrlr", "LifeTime"),
            cache_policy=CachePolicy(dm.get_str("AuthCacheCtrlr", "Policy")),
            cache_disable_post_authorize=dm.get_bool("AuthCacheCtrlr", "DisablePostAuthorize"),
            list_enabled=dm.get_bool("LocalAuthListCtrlr", "Enabled"),
            list_items_per_message=dm.get_int("LocalAuthListCtrlr", "ItemsPerMessage"),
            list_bytes_per_message=dm.get_int("LocalAuthListCtrlr", "BytesPerMessage"),
            list_disable_post_authorize=dm.get_bool("LocalAuthListCtrlr",
                                                    "DisablePostAuthorize"))

    def _connection_config(self) -> ConnectionConfig:
        s = self.settings
        profile = self.dm.get_int(SEC, "SecurityProfile")
        tls = self.certs.tls_material()
        return ConnectionConfig(
            csms_url=s.csms_url, identity=s.identity, security_profile=profile,
            basic_auth_password=self.dm.get(SEC, "BasicAuthPassword") if profile < 3 else None,
            ca_file=tls.ca_file or s.ca_file,
            # A certificate the CSMS signed for us (A02/A03) wins over the factory one.
            client_cert_file=tls.client_cert_file or s.client_cert_file,
            client_key_file=tls.client_key_file if tls.client_cert_file else s.client_key_file,
            versions=s.versions, ping_interval_s=self.dm.get_int(COMM, "WebSocketPingInterval"))

    def _backoff(self) -> BackoffSettings:
        return BackoffSettings(
            wait_minimum_s=self.dm.get_int(COMM, "RetryBackOffWaitMinimum"),
            random_range_s=self.dm.get_int(COMM, "RetryBackOffRandomRange"),
            repeat_times=self.dm.get_int(COMM, "RetryBackOffRepeatTimes"))

    def _timeout_s(self) -> float:
        return float(self.dm.get_int(COMM, "MessageTimeout", instance="Default"))

    def _on_variable_changed(self, change: Change) -> None:
        key = change.key
        if key.component == AUTH and key.variable == "Enabled":
            self._apply_auth_mode()
        elif key.component == "AlignedDataCtrlr":
            self.evse.rearm_aligned()
        elif key.component == "SampledDataCtrlr":
            self.evse.rearm_periodic()

    def _apply_auth_mode(self) -> None:
        free = self.evse.free_charging
        if not free and self.evse.tx is None and self.connector.authorized:
            self.connector.authorize(False)
        self.evse.on_step(None)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Before the connector's first step: close what the last run left open, decide who
        authorizes, apply stored profiles, then connect."""
        # The transaction a crash left open is closed before anything can add to it.
        self.evse.recover()
        self._apply_auth_mode()
        self.evse.inoperative = self.dm.get_str("EVSE", "AvailabilityState",
                                                evse=1) == "Unavailable"
        self.evse.start()
        self.connector.step_listeners.append(self._on_step)
        self.apply_profiles()
        self.apply_grid_settings()
        self._link = Link(self._connection_config, self._session, backoff=self._backoff,
                          rng=random.random, on_state=self._on_link_state)
        self.spawn(self._link.run())
        log_security_event(SecurityEvent.STARTUP_OF_THE_DEVICE, self.clock.now())

    async def stop(self) -> None:
        """At shutdown, after the connector has opened the contactor: end the transaction and
        give the queue a moment to deliver it, then close."""
        self.evse.shutdown()
        if self.online and self.queue.size():
            try:
                await asyncio.wait_for(self._queue_empty(), 2.0)
            except TimeoutError:
                logs.log(self.log, "shutdown_with_queued_messages", size=self.queue.size())
        if self._link is not None:
            await self._link.close()
        await self.firmware.close()
        await self.uploads.close()
        await self._tasks.cancel_and_wait()
        if self._on_step in self.connector.step_listeners:
            self.connector.step_listeners.remove(self._on_step)
        self.evse.stop()
        if self._limit_timer is not None:
            self._limit_timer.cancel()
        self.db.close()

    async def _queue_empty(self) -> None:
        while self.queue.size():
            await asyncio.sleep(0.05)

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` as a task the station keeps, logs the failure of, and cancels at stop."""
        self._tasks.spawn(work)

    def _on_link_state(self, state: LinkState, error: ConnectError | None) -> None:
        logs.log(self.log, "link", state=state.value,
                 error=None if error is None else error.kind.value)
        if error is not None and error.security_event is not None:
            self.security_event(SecurityEvent(error.security_event), error.detail)

    # ---- one connection ----------------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self.rpc is not None and self.accepted

    async def _session(self, connected: Connected) -> None:
        """One connection. A bug in here ends this connection, not the station: the link
        backs off and connects again."""
        try:
            await self._run_session(connected)
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception as exc:
            logs.log(self.log, "session_failed", logging.ERROR, error=repr(exc),
                     trace=traceback.format_exc(limit=8))
            await connected.ws.close(1011, "internal error")

    async def _run_session(self, connected: Connected) -> None:
        loop = asyncio.get_running_loop()
        rpc = Rpc(connected.ws, connected.version, handlers_for(self, connected.version),
                  timeout_s=self._timeout_s)
        self.rpc = rpc
        self.accepted = False
        serve = loop.create_task(rpc.serve())
        boot = loop.create_task(self._boot(rpc))
        workers: list[asyncio.Task[None]] = [boot]
        try:
            done, _ = await asyncio.wait({serve, boot}, return_when=asyncio.FIRST_COMPLETED)
            if serve in done:
                boot.cancel()
                serve.result()
                return
            boot.result()  # a boot that failed ends this connection (see _session)
            if self._link is not None:
                self._link.mark_healthy()
            self.certs.confirm_station_certificate()
            workers += [loop.create_task(w) for w in (
                self._heartbeats(rpc), self._drain(rpc), self._after_boot(rpc))]
            await serve
        finally:
            self.accepted = False
            self.rpc = None
            rpc.close()
            serve.cancel()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(serve, *workers, return_exceptions=True)

    async def _boot(self, rpc: Rpc) -> None:
        """BootNotification until Accepted (B01-B03). While Pending the CSMS may configure us;
        while Rejected we send nothing else and retry after its interval."""
        # Only the first boot after an update does real work here (hashing the new slot; tiny on
        # the sim board). Not in a thread: virtual time would run ahead of it.
        updated = self.firmware.booted_after_update()
        reason = "FirmwareUpdate" if updated else self._meta("boot_reason") or "PowerUp"
        s = self.settings
        station: Payload = {"model": s.model[:20], "vendorName": s.vendor[:50],
                            "firmwareVersion": s.firmware_version[:50]}
        if s.serial_number:
            station["serialNumber"] = s.serial_number[:25]
        while True:
            try:
                answer = await rpc.call("BootNotification", {"chargingStation": station,
                                                             "reason": reason})
            except (OcppCallError, CallTimeoutError) as exc:
                logs.log(self.log, "boot_failed", logging.WARNING, error=str(exc))
                await asyncio.sleep(max(1, self._backoff().wait_minimum_s))
                continue
            status, interval = answer["status"], int(answer["interval"])
            logs.log(self.log, "boot", status=status, interval=interval, version=rpc.version)
            if status == "Accepted":
                if interval > 0:
                    self.dm.set_internal(COMM, "HeartbeatInterval", str(interval))
                self._set_meta("boot_reason", "PowerUp")
                self.accepted = True
                return
            await asyncio.sleep(interval if interval > 0 else 30)

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM station_meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO station_meta (key, value) VALUES (?, ?)",
                        (key, value))

    async def _after_boot(self, rpc: Rpc) -> None:
        """What the CSMS must hear after every (re)connection: each connector's status, then a
        firmware installation's outcome; then a certificate renewal if one is due (A03)."""
        self.evse.status = self.evse.connector_status()
        await self._send(rpc, "StatusNotification", self.evse.status_payload())
        await self.firmware.on_boot()
        expiry = self.certs.station_certificate_expiry()
        if expiry is not None and renewal_due(expiry, self.clock.now()):
            logs.log(self.log, "certificate_renewal_due", expires=iso(expiry))
            await self._sign_with_resends(CertificateUse.CHARGING_STATION, rpc.version)

    async def _sign_with_resends(self, use: CertificateUse, version: str) -> None:
        """SignCertificate, then again after CertSigningWaitMinimum (doubling, at most
        CertSigningRepeatTimes) while no CertificateSigned has arrived (A02.FR.17-19)."""
        answer = await self.call("SignCertificate", self.sign_request(use, version))
        if answer is None or answer.get("status") != "Accepted":
            return
        retry = SignRetry(sent_at=self.clock.now())
        while True:
            at = next_resend_at(retry, wait_minimum=self.dm.get_int(SEC, "CertSigningWaitMinimum"),
                                repeat_times=self.dm.get_int(SEC, "CertSigningRepeatTimes"))
            if at is None:
                return
            await asyncio.sleep(max(0.0, at - self.clock.now()))
            request = self.security.pending_sign_request(use)
            if request is None:
                return  # the certificate came
            await self.call("SignCertificate", request)
            retry = resent(retry, self.clock.now())

    async def _heartbeats(self, rpc: Rpc) -> None:
        while True:
            await asyncio.sleep(max(1, self.dm.get_int(COMM, "HeartbeatInterval")))
            await self._send(rpc, "Heartbeat", {})

    async def _send(self, rpc: Rpc, action: str, payload: Payload) -> Payload | None:
        try:
            return await rpc.call(action, payload)
        except (OcppCallError, CallTimeoutError) as exc:
            logs.log(self.log, "send_failed", logging.WARNING, action=action, error=str(exc))
            return None

    async def call(self, action: str, payload: Payload) -> Payload | None:
        """A CALL of ours now, if connected (reports, answers to TriggerMessage)."""
        rpc = self.rpc
        if rpc is None:
            return None
        try:
            return await self._send(rpc, action, payload)
        except websockets.ConnectionClosed:
            return None

    # ---- the outbox: OcppEvse and the handlers send through here ----------------------------

    def enqueue_tx(self, payload: Payload, tx_id: str, event_type: str,
                   persist: Callable[[], None]) -> None:
        # Checked once, here, so a replay of thousands does not pay for it again. Against the
        # 2.0.1 schema: our events use only what both versions share, and the 2.1 schema takes
        # them too (tests/ocpp/test_ocpp_transactions.py checks every shape against both);
        # checking both would cost 1.5 ms inside the connector's step instead of 0.9 ms.
        check_request("TransactionEvent", payload, "2.0.1")
        with transaction(self.db):
            persist()
            self.queue.enqueue("TransactionEvent", payload, tx_id=tx_id, event_type=event_type)
        self._wake.set()
        self.queue.wake()

    def send_now(self, action: str, payload: Payload) -> None:
        """A message that is not transaction-related: sent if connected; while offline queued
        only with QueueAllMessages, otherwise dropped (the CSMS asks again after reconnecting,
        and statuses are sent anew after every boot)."""
        if self.online:
            self.spawn(self._send_quietly(action, payload))
        elif self.dm.get_bool(COMM, "QueueAllMessages"):
            self.queue.enqueue(action, payload)

    async def _send_quietly(self, action: str, payload: Payload) -> None:
        await self.call(action, payload)

    async def _drain(self, rpc: Rpc) -> None:
        send = queued_sender(rpc, self._on_transaction_answer)
        while True:
            self._wake.clear()
            await self.queue.drain(
                send, now=self.clock.now, sleep=asyncio.sleep,
                attempts_allowed=lambda: self.dm.get_int(COMM, "MessageAttempts",
                                                         instance="TransactionEvent"),
                interval_s=lambda: float(self.dm.get_int(COMM, "MessageAttemptInterval",
                                                         instance="TransactionEvent")))
            await self._wake.wait()

    def _on_transaction_answer(self, request: Payload, answer: Payload) -> None:
        """E05: the CSMS's verdict on the transaction's token, which may arrive after an
        offline or locally authorized start."""
        info, token = answer.get("idTokenInfo"), request.get("idToken")
        if info is None or token is None:
            return
        decision = self.auth.on_transaction_response(token, info, self.clock.now(),
                                                     evse_id=1)
        tx = self.evse.tx
        if (not decision.accepted and tx is not None
                and tx.id == request["transactionInfo"]["transactionId"]
                and self.dm.get_bool("TxCtrlr", "StopTxOnInvalidId")):
            logs.log(self.log, "token_refused_by_csms", tx=tx.id, reason=decision.reason.value)
            self.evse.refused()

    # ---- authorization: a card at the reader, or the sim's "tap" command ---------------------

    async def present_token(self, id_token: Payload) -> bool:
        """True when charging may go on (or was stopped by the same card) for this token."""
        tx = self.evse.tx
        if (tx is not None and self.connector.authorized and tx.id_token is not None
                and tokens_equal(tx.id_token, id_token)):
            self.evse.local_stop(id_token)  # E07: the same card again ends it
            return True
        if self.evse.inoperative:
            logs.log(self.log, "token_refused", reason="unavailable")
            return False
        if id_token.get("type") in ("Central", "NoAuthorization"):
            # These mean "the CSMS started it" and "no identification needed": neither can be
            # presented at a reader (C05 is RequestStartTransaction's path).
            logs.log(self.log, "token_refused", reason="type_not_presentable")
            return False
        now = self.clock.now()
        decision = self.auth.decide(id_token, online=self.online, now=now, evse_id=1)
        rpc = self.rpc
        if decision.outcome is AuthOutcome.ASK_CSMS and rpc is not None:
            try:
                answer = await rpc.call("Authorize", {"idToken": id_token})
            except (OcppCallError, CallTimeoutError, websockets.ConnectionClosed):
                decision = self.auth.decide(id_token, online=False, now=now, evse_id=1)
            else:
                decision = self.auth.on_authorize_response(id_token, answer["idTokenInfo"],
                                                           self.clock.now(), evse_id=1)
        elif decision.outcome is AuthOutcome.ASK_CSMS:
            decision = self.auth.decide(id_token, online=False, now=now, evse_id=1)
        logs.log(self.log, "token", outcome=decision.outcome.value,
                 source=decision.source.value, reason=decision.reason.value)
        if decision.accepted:
            self.evse.authorize(id_token)
        return decision.accepted

    async def remote_start(self, id_token: Payload, remote_start_id: int,
                           profile: Payload | None) -> None:
        """F01/F02, after the response went out: authorize (asking the CSMS first when
        AuthorizeRemoteStart says so), and bind the TxProfile to the transaction."""
        if self.dm.get_bool(AUTH, "AuthorizeRemoteStart") and self.rpc is not None:
            try:
                answer = await self.rpc.call("Authorize", {"idToken": id_token})
            except (OcppCallError, CallTimeoutError, websockets.ConnectionClosed):
                return
            decision = self.auth.on_authorize_response(id_token, answer["idTokenInfo"],
                                                       self.clock.now(), evse_id=1)
            if not decision.accepted:
                return
        self._pending_tx_profile = profile
        self.evse.authorize(id_token, remote_start_id=remote_start_id)
        self._bind_pending_profile()

    def _bind_pending_profile(self) -> None:
        profile, tx = self._pending_tx_profile, self.evse.tx
        if profile is None or tx is None:
            return
        self._pending_tx_profile = None
        bound = {**profile, "transactionId": tx.id}
        response = sc.set_charging_profile({"evseId": 1, "chargingProfile": bound},
                                           self.sc_context(), self.profiles, self.clock.now())
        logs.log(self.log, "remote_start_profile", status=response["status"])
        self.apply_profiles()

    # ---- smart charging → the limit arbiter --------------------------------------------------

    def sc_context(self, version: str | None = None) -> sc.ValidationContext:
        tx = self.evse.tx
        return sc.ValidationContext(
            version=version or (self.rpc.version if self.rpc else "2.1"), n_evses=1,
            active_transactions={1: tx.id} if tx is not None else {},
            rate_units=frozenset(self.dm.get_list("SmartChargingCtrlr", "RateUnit")),
            max_stack_level=self.dm.get_int("SmartChargingCtrlr", "ProfileStackLevel"),
            periods_per_schedule=self.dm.get_int("SmartChargingCtrlr", "PeriodsPerSchedule"),
            bidirectional=self.board.ratings.bidirectional,
            phases=self.board.ratings.phases,
            phase_switching=self.dm.get_bool("SmartChargingCtrlr",
                                             "ACPhaseSwitchingSupported"))

    def count_profiles(self) -> None:
        self.dm.set_internal("SmartChargingCtrlr", "Entries", str(len(self.profiles.all())),
                             instance="ChargingProfiles")

    def tx_context(self) -> sc.TxContext | None:
        tx = self.evse.tx
        return None if tx is None else sc.TxContext(transaction_id=tx.id,
                                                    started_at=tx.started_at)

    def apply_profiles(self) -> bool:
        """The installed profiles as operator-class limits now, and again whenever one of them
        next changes value: a SetChargingProfile reaches the PWM in the same turn of the loop.

        False when they cannot be evaluated (a bug, or a stored profile this version cannot
        read): then charging stops with a 0 A operator limit that says why, rather than run
        without the operator's limits."""
        now = self.clock.now()
        r = self.board.ratings
        tx = self.tx_context()
        ok = True
        try:
            self.profiles.drop_expired(now)
            profiles = self.profiles.all()
            # Submitted without their end: this method replaces them at that instant, and an
            # end in the arbiter too would let a step in between run without the limit.
            current = {lim.source: replace(lim, valid_until=None) for lim in sc.limits_at(
                profiles, evse_id=1, now=now, tx=tx, phases=r.phases,
                voltage_v=r.nominal_voltage_v)}
            change = sc.next_change(profiles, evse_id=1, now=now, tx=tx)
        except Exception as exc:
            logs.log(self.log, "profiles_failed", logging.ERROR, error=repr(exc),
                     trace=traceback.format_exc(limit=8))
            current = {LimitSource.OCPP_STATION_MAX: Limit.of(
                LimitSource.OCPP_STATION_MAX, f"charging profiles cannot be evaluated: {exc!r}",
                amps=0.0)}
            change = None
            ok = False
        for source in _OCPP_SOURCES:
            limit: Limit | None = current.get(source)
            if limit is None:
                self.limits.withdraw(source)
            else:
                self.limits.submit(limit)
        if self._limit_timer is not None:
            self._limit_timer.cancel()
            self._limit_timer = None
        if change is not None:
            loop = asyncio.get_running_loop()
            self._limit_timer = loop.call_later(max(0.0, change - now), self.apply_profiles)
        return ok

    def _on_tx_changed(self, tx: Tx | None) -> None:
        if tx is None:
            self._pending_tx_profile = None
        if tx is None and self._last_tx is not None:
            self.profiles.on_transaction_ended(self._last_tx)
            self.allowed_energy_transfer = ()
        self._last_tx = None if tx is None else tx.id
        if tx is not None:
            self._bind_pending_profile()
        self.apply_profiles()
        if tx is None and self.reset_pending is not None:
            self.restart_soon(self.reset_pending)

    def _on_step(self, _step: object) -> None:
        """Inside the connector's step: contained like OcppEvse.on_step."""
        try:
            self._watch_local_limit()
        except Exception as exc:
            logs.log(self.log, "local_limit_watch_failed", logging.ERROR, error=repr(exc))

    def _watch_local_limit(self) -> None:
        """NotifyChargingLimit when a local source (grid operator, EMS) starts limiting charging,
        ClearedChargingLimit when it stops (K12, K13)."""
        binding = self.connector.limit.binding
        source = None
        if binding is not None and binding.source not in (LimitSource.USER,
                                                          LimitSource.EMS_MODE):
            # The driver's own limit (or mode off) is not an external charging limit.
            source = _LIMIT_SOURCE_NAME.get(binding.cls)
        if source == self._external_limit:
            return
        previous, self._external_limit = self._external_limit, source
        if previous is not None:
            self.send_now("ClearedChargingLimit", {"chargingLimitSource": previous,
                                                  "evseId": 1})
        if source is not None and binding is not None:
            # The reason travels in customData: NotifyChargingLimit has no field for it.
            self.send_now("NotifyChargingLimit", {
                "chargingLimit": {"chargingLimitSource": source,
                                  "isGridCritical": binding.cls is LimitClass.GRID},
                "evseId": 1,
                "customData": {"vendorId": "org.voltpilot", "source": binding.source.key,
                               "reason": binding.reason[:255]}})
            logs.log(self.log, "local_limit", source=source, reason=binding.reason)

    def apply_grid_settings(self) -> None:
        """DER controls (2.1) in force: kept for the grid-operator layer, which enforces them
        on bidirectional boards."""
        r = self.board.ratings
        self.der.prune(self.clock.now())  # expired controls would otherwise pile up
        self.grid_settings = active_grid_settings(
            self.der.controls(self.clock.now()), self.clock.now(),
            rated_discharge_w=r.max_current_a * r.phases * r.nominal_voltage_v,
            nominal_voltage_v=r.nominal_voltage_v)

    # ---- reset ---------------------------------------------------------------------------------

    def restart_soon(self, reset_type: str) -> None:
        """Restart once the response and the transaction's Ended event are out (B11, B12)."""
        self._set_meta("boot_reason", "RemoteReset")
        self.reset_pending = None

        async def later() -> None:
            if self.online:
                try:
                    await asyncio.wait_for(self._queue_empty(), 5.0)
                except TimeoutError:
                    logs.log(self.log, "reset_with_queued_messages", size=self.queue.size())
            logs.log(self.log, "reset", type=reset_type)
            self.request_restart(f"OCPP Reset {reset_type}")

        self.spawn(later())

    async def _reboot_for_firmware(self) -> None:
        self._set_meta("boot_reason", "FirmwareUpdate")
        self.request_restart("firmware installed")

    # ---- firmware, logs, security events -------------------------------------------------------

    async def _firmware_status(self, payload: Payload) -> None:
        self.send_now("FirmwareStatusNotification", payload)

    async def _log_status(self, payload: Payload) -> None:
        self.send_now("LogStatusNotification", payload)

    async def _security_event_text(self, kind: str, tech_info: str) -> None:
        self.security_event(SecurityEvent(kind), tech_info)

    def security_event(self, kind: SecurityEvent, tech_info: str | None = None) -> None:
        """A04: into the security log always; to the CSMS when connected, and queued while
        offline when the spec calls the event critical."""
        now = self.clock.now()
        log_security_event(kind, now, tech_info)
        payload = security_event_notification(kind, now, tech_info)
        if self.online:
            self.spawn(self._send_quietly("SecurityEventNotification", payload))
        elif is_critical(kind) and kind is not self._last_offline_event:
            # A failing TLS handshake repeats at every reconnect attempt: queue the first of a
            # run, the security log has them all.
            self.queue.enqueue("SecurityEventNotification", payload)
        self._last_offline_event = None if self.online else kind

    async def on_certificate_signed(self, payload: Payload) -> Payload:
        response, outcome = self.security.certificate_signed(
            payload, identity=self.settings.identity, now=self.clock.now(),
            max_chain_size=self.dm.get_int(SEC, "MaxCertificateChainSize"))
        if outcome.event is not None:
            self.security_event(outcome.event, outcome.tech_info)
        if outcome.reconnect and self._link is not None:
            self.spawn(self._reconnect())
        return response

    async def _reconnect(self) -> None:
        """A02.FR.08: use the new certificate on a new connection."""
        await asyncio.sleep(0)
        if self.rpc is not None:
            await self.rpc.transport_close()

    def sign_request(self, use: CertificateUse, version: str) -> Payload:
        return self.security.sign_certificate_request(
            use, self.settings.identity, self.dm.get_str(SEC, "OrganizationName"),
            include_root_hash=version == "2.1")

    # ---- helpers for the handlers --------------------------------------------------------------

    def triggered(self, what: str, version: str) -> Callable[[], Awaitable[None]] | bool:
        """TriggerMessage (F06): the message to send after the response, False when it cannot
        be sent now (Rejected), True when we do not implement it (NotImplemented)."""
        if what == "BootNotification":
            return False  # F06.FR.17: not once the boot was accepted
        payload: Payload | None
        if what == "Heartbeat":
            payload = {}
        elif what == "StatusNotification":
            payload = self.evse.status_payload()
        elif what == "MeterValues":
            payload = self.evse.meter_values_payload("Trigger")
        elif what == "FirmwareStatusNotification":
            payload = self.firmware.status()
        elif what == "LogStatusNotification":
            payload = self.uploads.status()
        elif what in ("SignChargingStationCertificate", "SignV2GCertificate"):
            use = (CertificateUse.CHARGING_STATION if what == "SignChargingStationCertificate"
                   else CertificateUse.V2G)
            return lambda: self._sign_with_resends(use, version)
        elif what == "TransactionEvent":
            if self.evse.tx is None:
                return False
            return self._trigger_transaction_event
        else:
            return True
        if payload is None:
            return False
        message = what
        body = payload
        return lambda: self._send_triggered(message, body)

    async def _send_triggered(self, action: str, payload: Payload) -> None:
        await self.call(action, payload)

    async def _trigger_transaction_event(self) -> None:
        self.evse.trigger_transaction_event()

    def unlock(self) -> bool:
        lock = self.connector.hw.lock
        if lock is None:
            return False
        lock.unlock()
        return True

    def now_iso(self) -> str:
        return iso(self.clock.now())


def queued_sender(rpc: Rpc, on_transaction_answer: Callable[[Payload, Payload], None]
                  ) -> Callable[[QueuedMessage], Awaitable[SendOutcome]]:
    """How a queued message goes out: under its queued id (a re-send after a crash is the same
    message to the CSMS), without a second schema check for a TransactionEvent (enqueue_tx
    checked it), the CSMS's answer turned into the queue's outcome."""

    async def send(message: QueuedMessage) -> SendOutcome:
        try:
            answer = await rpc.call(message.action, message.payload,
                                    unique_id=message.message_id,
                                    checked=message.action == "TransactionEvent")
        except OcppCallError:
            return SendOutcome.REJECTED
        except CallTimeoutError:
            return SendOutcome.TIMEOUT
        except websockets.ConnectionClosed:
            return SendOutcome.DISCONNECTED
        if message.action == "TransactionEvent":
            on_transaction_answer(message.payload, answer)
        return SendOutcome.DELIVERED

    return send
