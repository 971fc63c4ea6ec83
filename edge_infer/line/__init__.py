"""Line integration: triggers, the PLC handshake (Modbus TCP, OPC UA), timed reject, recipes,
MQTT and the operator page — all hung off the one server's verdict stream (``Server.listeners``)
and journal, never a second pipeline. Start with ``service.attach(server)``."""
