# Runs first on a board, before main.py. Keep it tiny: nothing here may fail in a way that
# stops main.py (and with it the watchdog) from starting.
import gc

gc.collect()
try:
    import esp  # ESP32: silence the ROM debug log on the console UART

    esp.osdebug(None)
except ImportError:
    pass
