import time

import paho.mqtt.client as mqtt


def test_mosquitto_fixture_accepts_a_publish(mosquitto):
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, ud, msg: got.append(msg.payload)
    c.connect("127.0.0.1", mosquitto.port)
    c.subscribe("t/#", qos=1)
    c.loop_start()
    import time

    time.sleep(0.2)
    c.publish("t/x", b"hello", qos=1).wait_for_publish(5)
    for _ in range(100):
        if got:
            break
        time.sleep(0.02)
    c.loop_stop()
    assert got == [b"hello"]


def test_password_and_acl_broker_starts(mosquitto_factory):
    b = mosquitto_factory(passwords={"m1": "pw"}, acl="pattern write meterveil/v1/%u/#\n").start()
    assert b.proc.poll() is None


def test_restart_keeps_queued_messages(mosquitto):
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="persist-sub", clean_session=False)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("q/#", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    sub.loop_stop()
    sub.disconnect()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    for i in range(5):
        pub.publish("q/x", str(i), qos=1).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    mosquitto.restart()
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="persist-sub", clean_session=False)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    for _ in range(100):
        if len(got) == 5:
            break
        time.sleep(0.05)
    sub.loop_stop()
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert "Permission denied" not in mosquitto.log.read_text()
