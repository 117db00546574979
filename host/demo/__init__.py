"""The one-machine demo: broker, gateway, MicroPython meters, decryption role and report, each role
started from its own folder, so the demo keeps the same boundaries as a deployment.

May import every role (it is glue); nothing below it may import the demo.
"""
