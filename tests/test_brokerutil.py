"""The test broker fixture itself: a real mosquitto that accepts publishes, takes passwords and an
ACL, and keeps a persistent session's queued messages across a restart."""

import threading

import paho.mqtt.client as mqtt
from brokerutil import wait_until


def _subscribed(client: mqtt.Client, topic: str) -> None:
    """Subscribe and wait for the SUBACK, however loaded the machine is."""
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe(topic, qos=1)
    assert done.wait(30)


def test_mosquitto_fixture_accepts_a_publish(mosquitto):
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, ud, msg: got.append(msg.payload)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    _subscribed(c, "t/#")
    c.publish("t/x", b"hello", qos=1).wait_for_publish(30)
    wait_until(lambda: got, 30)
    c.loop_stop()
    assert got == [b"hello"]


def test_password_and_acl_broker_starts(mosquitto_factory):
    b = mosquitto_factory(passwords={"m1": "pw"}, acl="pattern write meterveil/v1/%u/#\n").start()
    assert b.proc.poll() is None


def test_restart_keeps_queued_messages(mosquitto):
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="persist-sub", clean_session=False)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    _subscribed(sub, "q/#")  # the broker now holds the session's subscription
    sub.loop_stop()
    sub.disconnect()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    for i in range(5):
        pub.publish("q/x", str(i), qos=1).wait_for_publish(30)
    pub.loop_stop()
    pub.disconnect()
    mosquitto.restart()
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="persist-sub", clean_session=False)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    wait_until(lambda: len(got) >= 5, 30)
    sub.loop_stop()
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert "Permission denied" not in mosquitto.log.read_text()
