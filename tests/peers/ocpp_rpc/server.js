#!/usr/bin/env node
// Independent OCPP CSMS test peer: an ocpp-rpc RPCServer in strict mode, which validates every
// CALL and CALLRESULT in both directions against the official OCPP JSON schemas. The station
// tests drive it over stdin/stdout with JSON lines (tests/ocpp/ocpp_rpc_peer.py is the client).
//
// Usage: node server.js --protocols ocpp2.1,ocpp2.0.1 [--port 0] [--host 127.0.0.1]
//                       [--interval 300] [--ping-interval 30] [--password SECRET]
//
// stdout events (one JSON object per line):
//   {"event":"listening","port":N}
//   {"event":"connected","identity","protocol","remoteAddress"}
//   {"event":"disconnected","identity","protocol","code","reason"}
//   {"event":"rejected","identity","status","reason"}                 handshake refused
//   {"event":"call","identity","protocol","action","messageId","payload"}  valid CP->CSMS call
//   {"event":"error","identity","protocol","kind","direction","action","messageId","code",
//    "message","payload"}   kind: call | response | frame | unhandled
//   {"event":"result","id","payload"}                                  answer to a "call" command
//   {"event":"callerror","id","code","message","details"}              station answered CALLERROR
//   {"event":"callfailed","id","reason","code","message"}              the call did not complete:
//       reason: invalid_request | invalid_response | timeout | not_connected | disconnected | other
//   {"event":"ack","id"} / {"event":"cmderror","id","message"}
//
// stdin commands:
//   {"cmd":"call","id":CORR,"identity":..,"action":..,"payload":{..},"timeoutMs":5000}
//   {"cmd":"close","id":CORR,"identity":..,"force":false}
//   {"cmd":"respond","id":CORR,"action":..,"payload":{..}}     fixed response for every station
//   {"cmd":"respond","id":CORR,"action":..,"error":{"code":..,"message":..}}   answer CALLERROR
//   {"cmd":"respond","id":CORR,"action":..,"noreply":true}     never answer (a silent CSMS)
//   {"cmd":"respond","id":CORR,"action":..}                    back to the default response
// EOF on stdin (or SIGTERM) closes the server and exits.
'use strict';

const readline = require('readline');
const { RPCServer, createValidator, createRPCError, NOREPLY, TimeoutError } = require('ocpp-rpc');

function parseArgs(argv) {
    const opts = {
        protocols: ['ocpp2.1', 'ocpp2.0.1'], port: 0, host: '127.0.0.1',
        interval: 300, pingInterval: 30, password: null,
    };
    for (let i = 0; i < argv.length; i += 2) {
        const [key, value] = [argv[i], argv[i + 1]];
        if (value === undefined) throw Error(`missing value for ${key}`);
        switch (key) {
            case '--protocols': opts.protocols = value.split(',').filter(Boolean); break;
            case '--port': opts.port = Number(value); break;
            case '--host': opts.host = value; break;
            case '--interval': opts.interval = Number(value); break;
            case '--ping-interval': opts.pingInterval = Number(value); break;
            case '--password': opts.password = value; break;
            default: throw Error(`unknown option ${key}`);
        }
    }
    return opts;
}

// ocpp-rpc 2.2.1 bundles the OCPP 2.1 schemas with ids like 'urn:BootNotificationRequest' but
// looks them up as 'urn:BootNotification.req' / '.conf', so its stock 2.1 validator reports every
// message as "Schema ... is missing". Relabel the ids and build the validator ourselves.
function ocpp21Validator() {
    const raw = require('ocpp-rpc/lib/schemas/ocpp2_1.json');
    const fixed = raw.map(s => ({
        ...s,
        $id: s.$id.replace(/Request$/, '.req').replace(/Response$/, '.conf'),
    }));
    return createValidator('ocpp2.1', fixed);
}

function emit(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

const opts = parseArgs(process.argv.slice(2));
const nowIso = () => new Date().toISOString();

// Minimal valid answers to every call a charging station sends, valid in 2.0.1 and 2.1 alike.
const defaults = {
    Authorize: () => ({ idTokenInfo: { status: 'Accepted' } }),
    BootNotification: () => ({ currentTime: nowIso(), interval: opts.interval, status: 'Accepted' }),
    ClearedChargingLimit: () => ({}),
    DataTransfer: () => ({ status: 'UnknownVendorId' }),
    FirmwareStatusNotification: () => ({}),
    Heartbeat: () => ({ currentTime: nowIso() }),
    LogStatusNotification: () => ({}),
    MeterValues: () => ({}),
    NotifyChargingLimit: () => ({}),
    NotifyCustomerInformation: () => ({}),
    NotifyDERAlarm: () => ({}),
    NotifyDERStartStop: () => ({}),
    NotifyDisplayMessages: () => ({}),
    NotifyEVChargingNeeds: () => ({ status: 'Accepted' }),
    NotifyEVChargingSchedule: () => ({ status: 'Accepted' }),
    NotifyEvent: () => ({}),
    NotifyMonitoringReport: () => ({}),
    NotifyPriorityCharging: () => ({}),
    NotifyReport: () => ({}),
    NotifySettlement: () => ({}),
    PublishFirmwareStatusNotification: () => ({}),
    ReportChargingProfiles: () => ({}),
    ReportDERControl: () => ({}),
    ReservationStatusUpdate: () => ({}),
    SecurityEventNotification: () => ({}),
    SignCertificate: () => ({ status: 'Accepted' }),
    StatusNotification: () => ({}),
    TransactionEvent: params => (params.idToken ? { idTokenInfo: { status: 'Accepted' } } : {}),
};

// Per-action overrides set with the "respond" command.
const overrides = new Map();

function answer(action, params) {
    const override = overrides.get(action);
    if (override) {
        if (override.noreply) return NOREPLY;
        if (override.error) {
            throw createRPCError(override.error.code, override.error.message ?? '', {});
        }
        return override.payload;
    }
    const responder = defaults[action];
    if (!responder) {
        throw createRPCError('NotImplemented', `test peer has no handler for '${action}'`, {});
    }
    return responder(params);
}

const server = new RPCServer({
    protocols: opts.protocols,
    strictMode: true,
    strictModeValidators: opts.protocols.includes('ocpp2.1') ? [ocpp21Validator()] : [],
    pingIntervalMs: opts.pingInterval * 1000,
});

server.auth((accept, reject, handshake) => {
    const offered = handshake.protocols;
    const protocol = opts.protocols.find(p => offered.has(p));
    if (!protocol) {
        const reason = `no supported subprotocol offered (${[...offered].join(',') || 'none'})`;
        emit({ event: 'rejected', identity: handshake.identity, status: 400, reason });
        reject(400, reason);
        return;
    }
    if (opts.password !== null) {
        const given = handshake.password ? handshake.password.toString('utf8') : null;
        if (given !== opts.password) {
            emit({ event: 'rejected', identity: handshake.identity, status: 401, reason: 'bad credentials' });
            reject(401, 'Unauthorized');
            return;
        }
    }
    accept({}, protocol);
});

// The newest connection per identity: a reconnecting station replaces its old socket.
const clients = new Map();
// Strict-mode failures of CSMS calls: our request was invalid (never sent), or the station's
// CALLRESULT was invalid. Both reject the call with an error that looks like a CALLERROR.
const invalidRequests = new WeakSet();
const invalidResponses = new WeakSet();

server.on('client', client => {
    const { identity, protocol } = client;
    clients.set(identity, client);
    emit({ event: 'connected', identity, protocol, remoteAddress: client.handshake.remoteAddress });

    client.on('strictValidationFailure', ev => {
        // Remember the exact error object so the "call" command can tell a schema-invalid
        // request or station response from a CALLERROR the station sent.
        if (ev.isCall && ev.outbound) invalidRequests.add(ev.error);
        if (!ev.isCall && !ev.outbound) invalidResponses.add(ev.error);
        emit({
            event: 'error', identity, protocol,
            kind: ev.isCall ? 'call' : 'response',
            direction: ev.outbound ? 'csms->cp' : 'cp->csms',
            action: ev.method, messageId: ev.messageId,
            code: ev.error.rpcErrorCode ?? 'GenericError', message: ev.error.message,
            payload: ev.isCall ? ev.params : ev.result,
        });
    });
    client.on('badMessage', ev => {
        emit({
            event: 'error', identity, protocol, kind: 'frame', direction: 'cp->csms',
            action: null, messageId: null,
            code: ev.error.rpcErrorCode ?? 'GenericError', message: ev.error.message,
            payload: ev.buffer.toString('utf8'),
        });
    });
    client.once('close', ({ code, reason }) => {
        if (clients.get(identity) === client) clients.delete(identity);
        emit({ event: 'disconnected', identity, protocol, code, reason: String(reason ?? '') });
    });

    client.handle(({ method, params, messageId }) => {
        emit({ event: 'call', identity, protocol, action: method, messageId, payload: params });
        try {
            return answer(method, params);
        } catch (err) {
            if (err.rpcErrorCode === 'NotImplemented') {
                emit({
                    event: 'error', identity, protocol, kind: 'unhandled', direction: 'cp->csms',
                    action: method, messageId, code: 'NotImplemented', message: err.message,
                    payload: params,
                });
            }
            throw err;
        }
    });
});

async function runCall(cmd) {
    const client = clients.get(cmd.identity);
    if (!client) {
        emit({ event: 'callfailed', id: cmd.id, reason: 'not_connected', code: null,
               message: `no station '${cmd.identity}' connected` });
        return;
    }
    try {
        const payload = await client.call(cmd.action, cmd.payload ?? {},
                                          { callTimeoutMs: cmd.timeoutMs ?? 5000 });
        emit({ event: 'result', id: cmd.id, payload });
    } catch (err) {
        const reason = failureReason(err);
        if (reason === null) {
            emit({ event: 'callerror', id: cmd.id, code: err.rpcErrorCode, message: err.message,
                   details: err.details ?? {} });
        } else {
            emit({ event: 'callfailed', id: cmd.id, reason, code: err.rpcErrorCode ?? null,
                   message: err.message });
        }
    }
}

// null when the station answered with a CALLERROR; otherwise why the call did not complete.
function failureReason(err) {
    if (invalidRequests.has(err)) return 'invalid_request';
    if (invalidResponses.has(err)) return 'invalid_response';
    if (err instanceof TimeoutError) return 'timeout';
    if (err.name === 'AbortError') return 'disconnected';
    if (err.rpcErrorCode) return null;
    return 'other';
}

async function runCommand(cmd) {
    switch (cmd.cmd) {
        case 'call':
            await runCall(cmd);
            break;
        case 'close': {
            const client = clients.get(cmd.identity);
            if (!client) {
                emit({ event: 'cmderror', id: cmd.id, message: `no station '${cmd.identity}' connected` });
                return;
            }
            await client.close({ code: 1000, force: Boolean(cmd.force) });
            emit({ event: 'ack', id: cmd.id });
            break;
        }
        case 'respond':
            if (cmd.payload === undefined && !cmd.error && !cmd.noreply) {
                overrides.delete(cmd.action);
            } else {
                overrides.set(cmd.action, { payload: cmd.payload, error: cmd.error, noreply: cmd.noreply });
            }
            emit({ event: 'ack', id: cmd.id });
            break;
        default:
            emit({ event: 'cmderror', id: cmd.id ?? null, message: `unknown command '${cmd.cmd}'` });
    }
}

let closing = false;
async function shutdown() {
    if (closing) return;
    closing = true;
    await server.close({ code: 1001, force: true }).catch(() => {});
    process.exit(0);
}

async function main() {
    const httpServer = await server.listen(opts.port, opts.host);
    emit({ event: 'listening', port: httpServer.address().port });

    const lines = readline.createInterface({ input: process.stdin });
    lines.on('line', line => {
        if (!line.trim()) return;
        let cmd;
        try {
            cmd = JSON.parse(line);
        } catch (err) {
            emit({ event: 'cmderror', id: null, message: `bad command line: ${err.message}` });
            return;
        }
        runCommand(cmd).catch(err => emit({ event: 'cmderror', id: cmd.id ?? null, message: String(err) }));
    });
    lines.on('close', shutdown);
    process.on('SIGTERM', shutdown);
}

main().catch(err => {
    process.stderr.write(`ocpp-rpc peer failed to start: ${err.stack || err}\n`);
    process.exit(1);
});
