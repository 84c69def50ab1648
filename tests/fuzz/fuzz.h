/*
 * Fuzz targets: the libFuzzer entry point every tests/fuzz/fuzz_*.c defines.
 *
 * A target gets one input (data[0..size), not NUL-terminated, possibly
 * empty), must not keep state that changes what the next input does, must
 * free what it allocates, and never prints.  A broken invariant of the
 * library's contract is reported with abort(), which libFuzzer and the
 * replay driver (driver.c) both treat as a crash.
 */
#ifndef P11ESCROW_FUZZ_H
#define P11ESCROW_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort unless cond holds: the library broke its documented contract. */
#define FUZZ_CHECK(cond)         \
	do {                     \
		if (!(cond))     \
			abort(); \
	} while (0)

#endif
