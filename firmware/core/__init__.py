"""Pure logic of charging: functions of (state, inputs, now). No I/O, no asyncio."""
