"""Meters on Modbus: device maps (data files in ``maps/``), SunSpec discovery, register
decoding and the poller that turns a meter's answer into a ``Reading`` or a typed fault."""
