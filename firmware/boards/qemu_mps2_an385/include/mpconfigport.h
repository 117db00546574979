// meterveil QEMU board: the qemu port's configuration, then what the meter needs on top.
// Found before the port's own file because the board's include/ is first on the include path.
#include_next <mpconfigport.h>

// asyncio: the meter's main loop (the port turns it off unconditionally).
#undef MICROPY_PY_ASYNCIO
#define MICROPY_PY_ASYNCIO (1)

// os.urandom for IVs and DP noise. QEMU's MPS2 has no TRNG: the port's mp_hal_get_random is an
// LCG, fine for an emulator test target and never for a real meter.
#define MICROPY_PY_OS_URANDOM (1)

// time.time()/time_ns() (seconds since boot here: there is no RTC), used by the unix HAL's clock.
#define MICROPY_PY_TIME_TIME_TIME_NS (1)
#define MICROPY_PY_TIME_INCLUDEFILE "modtime_board.c"
