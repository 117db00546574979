// time.time() and time.time_ns() for the QEMU board: there is no RTC, so the epoch is power-on
// (the meter's clock code only needs a monotonic wall clock here). Included into extmod/modtime.c.
#include "py/mphal.h"
#include "py/obj.h"

uint64_t mp_hal_time_ns(void) {
    return (uint64_t)mp_hal_ticks_ms() * 1000000ULL;
}

static mp_obj_t mp_time_time_get(void) {
    return mp_obj_new_int_from_uint(mp_hal_ticks_ms() / 1000);
}
