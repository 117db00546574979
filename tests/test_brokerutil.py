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
