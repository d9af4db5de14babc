"""The components and variables voltpilot implements, declared once each (OCPP 2.0.1/2.1 part 2,
"Referenced Components and Variables"), with the defaults of a small AC wallbox.

Read it as a table: component, variable, data type, mutability, default, then the traits.
Board facts (phases, power, connector type, identity) are not guessed here: the station passes
them as overrides (see `station_overrides`), merged over these defaults at start.

Choices worth knowing:
- TxStartPoint "PowerPathClosed" and TxStopPoint "EVConnected,Authorized": the transaction
  starts when the EV is connected and authorized and ends when either goes away, the
  OCPP 1.6-like configuration the spec describes, so every transaction is a real session.
  ParkingBayOccupancy and DataSigned are not offered: there is no bay sensor and no signed meter.
- SecurityProfile is ReadWrite so the CSMS can raise it by SetVariables (the station registers
  `never_lower`); it, NetworkConfigurationPriority and Identity take effect after a reboot.
- ActiveNetworkProfile, the Entries counts, Storage use, Problem and EVSE Power are kept by the
  station with `set_internal` and start from their default at every boot.
- AvailabilityState is persisted so the station can restore an Unavailable (inoperative)
  state after a reboot.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from firmware.ocpp.device_model import Attribute, DataType, Declaration, Mutability, VarKey

RO, RW, WO = Mutability.READ_ONLY, Mutability.READ_WRITE, Mutability.WRITE_ONLY
INT, DEC, BOOL, STR = DataType.INTEGER, DataType.DECIMAL, DataType.BOOLEAN, DataType.STRING
DATETIME, OPTIONS = DataType.DATE_TIME, DataType.OPTION_LIST
MEMBERS, SEQUENCE = DataType.MEMBER_LIST, DataType.SEQUENCE_LIST

# What our meter and arbiter can report (energy import/export, power, per-phase current and
# voltage, the offered limit, SoC when the EV tells it).
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Power.Active.Export",
              "Power.Offered", "Current.Import", "Current.Export", "Current.Offered", "Voltage",
              "SoC")
TX_POINTS = ("EVConnected", "Authorized", "PowerPathClosed", "EnergyTransfer")
AVAILABILITY_STATES = ("Available", "Occupied", "Reserved", "Unavailable", "Faulted")
NETWORK_SLOTS = ("1", "2", "3")
SINGLE_EVSE: Mapping[int, tuple[int, ...]] = MappingProxyType({1: (1,)})


def var(component: str, variable: str, data_type: DataType, mutability: Mutability,
        default: str | None, *, instance: str | None = None, evse: int | None = None,
        connector: int | None = None, unit: str | None = None, low: float | None = None,
        high: float | None = None, values: tuple[str, ...] = (),
        extra: tuple[Attribute, ...] = (), persistent: bool = True, constant: bool = False,
        reboot: bool = False, secret: bool = False, allow_empty: bool = False) -> Declaration:
    """One row of the table (`instance` is the variable's instance; low/high are the limits)."""
    return Declaration(VarKey(component, variable, variable_instance=instance, evse=evse,
                              connector=connector),
                       data_type, mutability, default, unit=unit, min_limit=low, max_limit=high,
                       values_list=values, extra_attributes=extra, persistent=persistent,
                       constant=constant, reboot_required=reboot, secret=secret,
                       allow_empty=allow_empty)


COMM = "OCPPCommCtrlr"
OCPP_COMM_CTRLR = (
    var(COMM, "ActiveNetworkProfile", INT, RO, "1", persistent=False),
    var(COMM, "MessageTimeout", INT, RO, "30", instance="Default", unit="s", low=1),
    var(COMM, "FileTransferProtocols", MEMBERS, RO, "HTTP,HTTPS", values=("HTTP", "HTTPS"),
        constant=True),
    var(COMM, "HeartbeatInterval", INT, RW, "300", unit="s", low=1, high=86400),
    var(COMM, "NetworkConfigurationPriority", SEQUENCE, RW, "1", values=NETWORK_SLOTS,
        reboot=True),
    var(COMM, "NetworkProfileConnectionAttempts", INT, RW, "3", low=1, high=100),
    var(COMM, "OfflineThreshold", INT, RW, "60", unit="s", low=0, high=86400),
    var(COMM, "QueueAllMessages", BOOL, RW, "false"),
    var(COMM, "MessageAttempts", INT, RW, "3", instance="TransactionEvent", low=1, high=100),
    var(COMM, "MessageAttemptInterval", INT, RW, "60", instance="TransactionEvent", unit="s",
        low=1, high=86400),
    var(COMM, "UnlockOnEVSideDisconnect", BOOL, RW, "true"),
    var(COMM, "ResetRetries", INT, RW, "2", low=0, high=10),
    var(COMM, "RetryBackOffRandomRange", INT, RW, "10", unit="s", low=0, high=3600),
    var(COMM, "RetryBackOffRepeatTimes", INT, RW, "5", low=0, high=20),
    # At least 1 s: a zero minimum would double to zero and reconnect in a tight loop.
    var(COMM, "RetryBackOffWaitMinimum", INT, RW, "3", unit="s", low=1, high=3600),
    var(COMM, "WebSocketPingInterval", INT, RW, "30", unit="s", low=0, high=3600),
)

SEC = "SecurityCtrlr"
SECURITY_CTRLR = (
    # 16 to 40 characters, the spec's limits for the password; never reported, never logged.
    var(SEC, "BasicAuthPassword", STR, WO, None, low=16, high=64, secret=True),
    # OCPP 2.1 part 4 limits the identity to 48 characters; it names the connection URL.
    var(SEC, "Identity", STR, RW, None, low=1, high=48, reboot=True),
    var(SEC, "OrganizationName", STR, RW, "voltpilot", low=1, high=64),
    var(SEC, "CertificateEntries", INT, RO, "0", persistent=False),
    var(SEC, "SecurityProfile", INT, RW, "1", low=1, high=3, reboot=True),
    # The CertificateSignedRequest certificateChain schema limit.
    var(SEC, "MaxCertificateChainSize", INT, RO, "10000", constant=True),
    var(SEC, "CertSigningWaitMinimum", INT, RW, "60", unit="s", low=1, high=86400),
    var(SEC, "CertSigningRepeatTimes", INT, RW, "3", low=0, high=100),
)

AUTH = "AuthCtrlr"
AUTH_CTRLR = (
    var(AUTH, "Enabled", BOOL, RW, "true"),
    var(AUTH, "AuthorizeRemoteStart", BOOL, RW, "false"),
    var(AUTH, "LocalAuthorizeOffline", BOOL, RW, "true"),
    var(AUTH, "LocalPreAuthorize", BOOL, RW, "false"),
    var(AUTH, "OfflineTxForUnknownIdEnabled", BOOL, RW, "false"),
    var(AUTH, "DisableRemoteAuthorization", BOOL, RW, "false"),
)

CACHE = "AuthCacheCtrlr"
AUTH_CACHE_CTRLR = (
    var(CACHE, "Enabled", BOOL, RW, "true"),
    var(CACHE, "Available", BOOL, RO, "true", constant=True),
    var(CACHE, "LifeTime", INT, RW, "86400", unit="s", low=1),
    # Bytes in use; maxLimit is the capacity.
    var(CACHE, "Storage", INT, RO, "0", high=1048576, persistent=False),
    var(CACHE, "Policy", OPTIONS, RO, "LRU", values=("LRU",), constant=True),
    var(CACHE, "DisablePostAuthorize", BOOL, RW, "false"),
)

LIST = "LocalAuthListCtrlr"
LOCAL_AUTH_LIST_CTRLR = (
    var(LIST, "Enabled", BOOL, RW, "true"),
    # Entries in the list; maxLimit is how many it can hold.
    var(LIST, "Entries", INT, RO, "0", high=10000, persistent=False),
    var(LIST, "Available", BOOL, RO, "true", constant=True),
    var(LIST, "ItemsPerMessage", INT, RO, "100", constant=True),
    var(LIST, "BytesPerMessage", INT, RO, "65536", constant=True),
    var(LIST, "Storage", INT, RO, "0", high=4194304, persistent=False),
    var(LIST, "DisablePostAuthorize", BOOL, RW, "false"),
)

TX = "TxCtrlr"
TX_CTRLR = (
    var(TX, "EVConnectionTimeOut", INT, RW, "120", unit="s", low=1, high=3600),
    var(TX, "StopTxOnEVSideDisconnect", BOOL, RW, "true"),
    var(TX, "StopTxOnInvalidId", BOOL, RW, "true"),
    var(TX, "MaxEnergyOnInvalidId", INT, RW, "0", unit="Wh", low=0),
    var(TX, "TxStartPoint", MEMBERS, RW, "PowerPathClosed", values=TX_POINTS),
    var(TX, "TxStopPoint", MEMBERS, RW, "EVConnected,Authorized", values=TX_POINTS),
)

SAMPLED = "SampledDataCtrlr"
SAMPLED_DATA_CTRLR = (
    var(SAMPLED, "Enabled", BOOL, RW, "true"),
    var(SAMPLED, "TxEndedMeasurands", MEMBERS, RW, "Energy.Active.Import.Register",
        values=MEASURANDS, allow_empty=True),
    var(SAMPLED, "TxEndedInterval", INT, RW, "0", unit="s", low=0, high=86400),
    var(SAMPLED, "TxStartedMeasurands", MEMBERS, RW, "Energy.Active.Import.Register",
        values=MEASURANDS, allow_empty=True),
    var(SAMPLED, "TxUpdatedMeasurands", MEMBERS, RW,
        "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage",
        values=MEASURANDS, allow_empty=True),
    var(SAMPLED, "TxUpdatedInterval", INT, RW, "60", unit="s", low=0, high=86400),
)

ALIGNED = "AlignedDataCtrlr"
ALIGNED_DATA_CTRLR = (
    var(ALIGNED, "Enabled", BOOL, RW, "true"),
    var(ALIGNED, "Measurands", MEMBERS, RW,
        "Energy.Active.Import.Register,Power.Active.Import", values=MEASURANDS,
        allow_empty=True),
    # Seconds after midnight UTC divisible by this are the sampling instants; 0 disables.
    var(ALIGNED, "Interval", INT, RW, "900", unit="s", low=0, high=86400),
    var(ALIGNED, "SendDuringIdle", BOOL, RW, "false"),
    var(ALIGNED, "TxEndedMeasurands", MEMBERS, RW, "Energy.Active.Import.Register",
        values=MEASURANDS, allow_empty=True),
    var(ALIGNED, "TxEndedInterval", INT, RW, "900", unit="s", low=0, high=86400),
)

SMART = "SmartChargingCtrlr"
SMART_CHARGING_CTRLR = (
    var(SMART, "Enabled", BOOL, RW, "true"),
    var(SMART, "Available", BOOL, RO, "true", constant=True),
    var(SMART, "ACPhaseSwitchingSupported", BOOL, RO, "false", constant=True),
    var(SMART, "ProfileStackLevel", INT, RO, "10", constant=True),
    var(SMART, "RateUnit", MEMBERS, RO, "A,W", values=("A", "W"), constant=True),
    var(SMART, "PeriodsPerSchedule", INT, RO, "96", constant=True),
    var(SMART, "ExternalControlSignalsEnabled", BOOL, RW, "true"),
    var(SMART, "NotifyChargingLimitWithSchedules", BOOL, RW, "false"),
    var(SMART, "Phases3to1", BOOL, RO, "false", constant=True),
    var(SMART, "Entries", INT, RO, "0", instance="ChargingProfiles", high=32, persistent=False),
    var(SMART, "LimitChangeSignificance", DEC, RW, "5.0", unit="Percent", low=0, high=100),
)

DEVICE = "DeviceDataCtrlr"
DEVICE_DATA_CTRLR = (
    *(var(DEVICE, "BytesPerMessage", INT, RO, "65536", instance=message, constant=True)
      for message in ("GetReport", "GetVariables", "SetVariables")),
    *(var(DEVICE, "ItemsPerMessage", INT, RO, "50", instance=message, constant=True)
      for message in ("GetReport", "GetVariables", "SetVariables")),
    # The schema limits: SetVariableData.attributeValue 1000, reported values 2500.
    var(DEVICE, "ConfigurationValueSize", INT, RO, "1000", constant=True),
    var(DEVICE, "ReportingValueSize", INT, RO, "2500", constant=True),
    var(DEVICE, "ValueSize", INT, RO, "1000", constant=True),
)

CLOCK = "ClockCtrlr"
CLOCK_CTRLR = (
    # Read from the station's clock through DeviceModel.add_source.
    var(CLOCK, "DateTime", DATETIME, RO, None, persistent=False),
    var(CLOCK, "TimeSource", SEQUENCE, RW, "Heartbeat", values=("Heartbeat", "NTP")),
)

STATION = "ChargingStation"
CHARGING_STATION = (
    var(STATION, "AvailabilityState", OPTIONS, RO, "Available", values=AVAILABILITY_STATES),
    var(STATION, "Available", BOOL, RO, "true", constant=True),
    var(STATION, "SupplyPhases", INT, RO, "3", low=0, high=3, constant=True),
    var(STATION, "Problem", BOOL, RO, "false", persistent=False),
    var(STATION, "VendorName", STR, RO, "voltpilot", constant=True),
    var(STATION, "Model", STR, RO, "voltpilot", constant=True),
    var(STATION, "SerialNumber", STR, RO, None, constant=True),
)

CONTROLLERS = (OCPP_COMM_CTRLR + SECURITY_CTRLR + AUTH_CTRLR + AUTH_CACHE_CTRLR
               + LOCAL_AUTH_LIST_CTRLR + TX_CTRLR + SAMPLED_DATA_CTRLR + ALIGNED_DATA_CTRLR
               + SMART_CHARGING_CTRLR + DEVICE_DATA_CTRLR + CLOCK_CTRLR + CHARGING_STATION)


def evse_declarations(evse: int, connectors: tuple[int, ...]) -> tuple[Declaration, ...]:
    """The EVSE component of one EVSE and the Connector components on it."""
    rows = [
        var("EVSE", "AvailabilityState", OPTIONS, RO, "Available", evse=evse,
            values=AVAILABILITY_STATES),
        var("EVSE", "Available", BOOL, RO, "true", evse=evse, constant=True),
        # Actual: the power now (set by the station); MaxSet: what the EVSE can deliver.
        var("EVSE", "Power", DEC, RO, "0", evse=evse, unit="W", extra=(Attribute.MAX_SET,),
            persistent=False),
        var("EVSE", "SupplyPhases", INT, RO, "3", evse=evse, low=0, high=3, constant=True),
    ]
    for connector in connectors:
        rows += [
            var("Connector", "AvailabilityState", OPTIONS, RO, "Available", evse=evse,
                connector=connector, values=AVAILABILITY_STATES),
            var("Connector", "Available", BOOL, RO, "true", evse=evse, connector=connector,
                constant=True),
            # ConnectorEnumType: sType2 a socket, cType2 a tethered cable.
            var("Connector", "ConnectorType", STR, RO, "sType2", evse=evse,
                connector=connector, constant=True),
            var("Connector", "SupplyPhases", INT, RO, "3", evse=evse, connector=connector,
                low=0, high=3, constant=True),
        ]
    return tuple(rows)


def declarations(evses: Mapping[int, tuple[int, ...]] = SINGLE_EVSE,
                 ) -> tuple[Declaration, ...]:
    """Everything the station declares, for EVSE ids mapped to their connector ids."""
    rows = CONTROLLERS
    for evse, connectors in sorted(evses.items()):
        rows += evse_declarations(evse, connectors)
    return rows


def station_overrides(*, identity: str, vendor: str, model: str, serial: str | None,
                      phases: int, max_power_w: float, tethered: bool,
                      evses: Mapping[int, tuple[int, ...]] = SINGLE_EVSE,
                      ) -> dict[VarKey, str | Mapping[Attribute, str]]:
    """The board-derived values to merge over the declared defaults."""
    out: dict[VarKey, str | Mapping[Attribute, str]] = {
        VarKey(SEC, "Identity"): identity,
        VarKey(STATION, "VendorName"): vendor,
        VarKey(STATION, "Model"): model,
        VarKey(STATION, "SupplyPhases"): str(phases),
    }
    if serial is not None:
        out[VarKey(STATION, "SerialNumber")] = serial
    for evse, connectors in evses.items():
        out[VarKey("EVSE", "SupplyPhases", evse=evse)] = str(phases)
        out[VarKey("EVSE", "Power", evse=evse)] = {Attribute.MAX_SET: f"{max_power_w:.1f}"}
        for connector in connectors:
            out[VarKey("Connector", "SupplyPhases", evse=evse, connector=connector)] = str(phases)
            out[VarKey("Connector", "ConnectorType", evse=evse, connector=connector)] = (
                "cType2" if tethered else "sType2")
    return out
