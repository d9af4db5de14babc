"""E11/E12 with a real crash: `voltpilot run --ocpp` as its own process, killed with SIGKILL in
the middle of a transaction, then started again. The CSMS (the `ocpp` library, real websockets,
real time) must receive every TransactionEvent exactly once (a re-send carries the same message
id, as OCPP-J requires, and counts once) with seqNo gap-free, the transaction closed."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ocpp_csms import Csms
from ocpp_station_rig import IDENTITY, PASSWORD, settings_file

from tools.evsim import request

ROUNDS = 3


async def _plant(sock: Path, **payload: Any) -> dict[str, Any]:
    return await asyncio.to_thread(request, sock, payload)


def _start(data: Path, settings: Path) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "stderr.txt", "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "firmware.cli", "run", "--board", "sim", "--ocpp",
             str(settings), "--data-dir", str(data), "--status", "off"],
            stdout=subprocess.DEVNULL, stderr=err)


def test_e12_kill_9_during_a_transaction_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("KILL_SEED", "7")))

    async def main() -> None:
        async with Csms(password=PASSWORD) as csms:
            csms.tokens["CARD1"] = "Accepted"
            settings = settings_file(tmp_path / "ocpp.toml", csms.url, password=PASSWORD)
            data = tmp_path / "data"
            sock = data / "plant.sock"
            proc = _start(data, settings)
            try:
                await csms.connected(IDENTITY)
                answer = await csms.request(IDENTITY, "SetVariables", {"setVariableData": [
                    {"component": {"name": "SampledDataCtrlr"},
                     "variable": {"name": "TxUpdatedInterval"}, "attributeValue": "1"}]})
                assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
                for _ in range(ROUNDS):
                    await csms.next_call("StatusNotification", after=len(
                        csms.calls("StatusNotification")) - 1)
                    await _plant(sock, cmd="plug", profile="compact_3p")
                    await _plant(sock, cmd="tap", id_token="CARD1")
                    await csms.wait_for(lambda: any(
                        e["eventType"] == "Started" for e in csms.transaction_events()
                        [-1:]), timeout=30)
                    # Somewhere within a few periodic updates: a send may be on the wire.
                    await asyncio.sleep(rng.uniform(0.5, 4.0))
                    proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(proc.wait, 10)
                    proc = _start(data, settings)
                    await csms.wait_for(lambda: sum(
                        1 for e in csms.transaction_events() if e["eventType"] == "Ended")
                        == sum(1 for e in csms.transaction_events()
                               if e["eventType"] == "Started"), timeout=30)
            finally:
                proc.send_signal(signal.SIGTERM)
                # In a thread: the CSMS must go on answering (the close handshake) meanwhile.
                code = await asyncio.to_thread(proc.wait, 15)
                assert code == 0, (data / "stderr.txt").read_text()[-2000:]
            events = csms.transaction_events()
            by_tx: dict[str, list[dict[str, Any]]] = {}
            for e in events:
                by_tx.setdefault(e["transactionInfo"]["transactionId"], []).append(e)
            assert len(by_tx) == ROUNDS
            for tx_events in by_tx.values():
                assert [e["seqNo"] for e in tx_events] == list(range(len(tx_events)))
                assert tx_events[0]["eventType"] == "Started"
                assert tx_events[-1]["eventType"] == "Ended"
                assert tx_events[-1]["transactionInfo"]["stoppedReason"] == "PowerLoss"
                assert len(tx_events) > 1

    asyncio.run(main())


def test_b11_reset_restarts_the_process_in_place(tmp_path: Path) -> None:
    async def main() -> None:
        async with Csms(password=PASSWORD) as csms:
            settings = settings_file(tmp_path / "ocpp.toml", csms.url, password=PASSWORD)
            proc = _start(tmp_path / "data", settings)
            try:
                await csms.next_call("StatusNotification")
                answer = await csms.request(IDENTITY, "Reset", {"type": "Immediate"})
                assert answer["status"] == "Accepted"
                boot = await csms.next_call("BootNotification", after=1, timeout=30)
                assert boot["reason"] == "RemoteReset"
                assert proc.poll() is None  # the same process, started again by exec
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 15)
            assert code == 0, (tmp_path / "data" / "stderr.txt").read_text()[-2000:]

    asyncio.run(main())


def test_bad_settings_file_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    settings = tmp_path / "ocpp.toml"
    settings.write_text('[ocpp]\ncsms_url = "http://x"\nidentity = "CP1"\n'
                        'password = "0123456789abcdef"\n')
    done = subprocess.run([sys.executable, "-m", "firmware.cli", "run", "--board", "sim",
                           "--ocpp", str(settings), "--data-dir", str(tmp_path / "d")],
                          check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "csms_url" in done.stderr and "ws://" in done.stderr
