# Prints the firmware MQTT encoder's output as JSON hex, for tests/test_fw_mqtt.py.
import json

from meter import mqtt

buf = bytearray(384)
out = {}
n = mqtt.encode_connect(buf, "m1", 60)
out["connect"] = bytes(buf[:n]).hex()
n = mqtt.encode_connect(buf, "m1", 60, "u", "p", "t", b"x")
out["connect_full"] = bytes(buf[:n]).hex()
n = mqtt.encode_publish(buf, "a/b", 3, 10, 1, True)
out["publish_dup"] = bytes(buf[:n]).hex()
n = mqtt.put_varlen(buf, 0, 200)
out["varlen200"] = bytes(buf[:n]).hex()
n = mqtt.put_varlen(buf, 0, 16384)
out["varlen16384"] = bytes(buf[:n]).hex()
t, f, body, nxt = mqtt.parse_packet(b"\x40\x02\x00\x0a")
out["puback"] = [t, f, body.hex(), nxt]
out["partial"] = mqtt.parse_packet(b"\x40\x02\x00") is None
try:
    mqtt.check_connack(b"\x00\x05")
except mqtt.MQTTError as e:
    out["refused"] = [e.reason, isinstance(e, OSError)]
out["url"] = [mqtt.parse_url("mqtts://h:8884"), mqtt.parse_url("mqtt://h"), mqtt.parse_url("http://h")]
print(json.dumps(out))
