// Byte order helpers axTLS's AES wants (a bare-metal newlib has no arpa/inet.h). Cortex-M is
// little-endian.
#ifndef METERVEIL_ARPA_INET_H
#define METERVEIL_ARPA_INET_H
#include <stdint.h>
static inline uint32_t htonl(uint32_t x) { return __builtin_bswap32(x); }
static inline uint32_t ntohl(uint32_t x) { return __builtin_bswap32(x); }
static inline uint16_t htons(uint16_t x) { return __builtin_bswap16(x); }
static inline uint16_t ntohs(uint16_t x) { return __builtin_bswap16(x); }
#endif
