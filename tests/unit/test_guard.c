/*
 * Unit tests: p11escrowd's failed-login counts (src/daemon/guard.c).  The
 * window is in whole monotonic seconds, so the expiry test sleeps ~2 s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "svc.h"

static void
test_name_limit(void **state)
{
	struct svc_guard *g = svc_guard_new(3, 0, 60);

	(void)state;
	assert_non_null(g);
	assert_int_equal(svc_guard_blocked(g, "192.0.2.1", "alice"), 0);
	assert_int_equal(svc_guard_failed(g, "192.0.2.1", "alice"), 0);
	assert_int_equal(svc_guard_failed(g, "192.0.2.1", "alice"), 0);
	assert_int_equal(svc_guard_blocked(g, "192.0.2.1", "alice"), 0);
	/* The third failure reaches the limit, once. */
	assert_int_equal(svc_guard_failed(g, "192.0.2.1", "alice"), SVC_GUARD_NAME);
	assert_in_range(svc_guard_blocked(g, "192.0.2.1", "alice"), 59, 60);
	assert_in_range(svc_guard_blocked(g, "198.51.100.7", "alice"), 59, 60); /* any address */
	{
		long long names = -1, addresses = -1;

		/* What /metrics shows: one name held off, no address (its counting is off). */
		svc_guard_held(g, &names, &addresses);
		assert_int_equal(names, 1);
		assert_int_equal(addresses, 0);
	}
	assert_int_equal(svc_guard_failed(g, "192.0.2.1", "alice"), 0);
	/* Other names are not held; address counting is off (limit 0). */
	assert_int_equal(svc_guard_blocked(g, "192.0.2.1", "bob"), 0);
	assert_int_equal(svc_guard_blocked(g, "192.0.2.1", NULL), 0);
	/* A success clears the name. */
	svc_guard_succeeded(g, "alice");
	assert_int_equal(svc_guard_blocked(g, "192.0.2.1", "alice"), 0);
	{
		long long names = -1, addresses = -1;

		svc_guard_held(g, &names, &addresses);
		assert_int_equal(names, 0);
		assert_int_equal(addresses, 0);
	}
	svc_guard_free(g);
}

static void
test_address_limit(void **state)
{
	struct svc_guard *g = svc_guard_new(0, 4, 60);
	char name[16];
	int i, reached = 0;

	(void)state;
	assert_non_null(g);
	for (i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "user%d", i);
		reached |= svc_guard_failed(g, "192.0.2.9", name);
	}
	assert_int_equal(reached, SVC_GUARD_ADDRESS);
	assert_true(svc_guard_blocked(g, "192.0.2.9", "someone-else") > 0);
	assert_int_equal(svc_guard_blocked(g, "192.0.2.10", "someone-else"), 0);
	/* A success for a name does not clear its address. */
	svc_guard_succeeded(g, "user1");
	assert_true(svc_guard_blocked(g, "192.0.2.9", "user1") > 0);
	svc_guard_free(g);
}

static void
test_window(void **state)
{
	struct svc_guard *g = svc_guard_new(2, 0, 1);

	(void)state;
	assert_non_null(g);
	svc_guard_failed(g, NULL, "carol");
	svc_guard_failed(g, NULL, "carol");
	assert_int_equal(svc_guard_blocked(g, NULL, "carol"), 1);
	sleep(2);
	/* A window after the last failure the name is free, and its count starts again. */
	assert_int_equal(svc_guard_blocked(g, NULL, "carol"), 0);
	assert_int_equal(svc_guard_failed(g, NULL, "carol"), 0);
	assert_int_equal(svc_guard_blocked(g, NULL, "carol"), 0);
	svc_guard_free(g);
}

static void
test_many_names(void **state)
{
	struct svc_guard *g = svc_guard_new(2, 0, 60);
	char name[32];
	int i;

	(void)state;
	assert_non_null(g);
	svc_guard_failed(g, NULL, "victim");
	svc_guard_failed(g, NULL, "victim");
	/* Far more names than slots: the table stays bounded and keeps working. */
	for (i = 0; i < 20000; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		svc_guard_failed(g, NULL, name);
	}
	/* A name held off outlives the flood: counts are pushed out first. */
	assert_true(svc_guard_blocked(g, NULL, "victim") > 0);
	assert_int_equal(svc_guard_failed(g, NULL, "last"), 0);
	assert_int_equal(svc_guard_failed(g, NULL, "last"), SVC_GUARD_NAME);
	assert_true(svc_guard_blocked(g, NULL, "last") > 0);
	/* Long names are cut, not overflowed. */
	memset(name, 'x', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	svc_guard_failed(g, NULL, name);
	svc_guard_free(g);
}

static void
test_off(void **state)
{
	struct svc_guard *g = svc_guard_new(0, 0, 60);
	int i;

	(void)state;
	assert_non_null(g);
	for (i = 0; i < 100; i++)
		assert_int_equal(svc_guard_failed(g, "192.0.2.1", "dave"), 0);
	assert_int_equal(svc_guard_blocked(g, "192.0.2.1", "dave"), 0);
	svc_guard_free(g);
	/* No table: nothing is ever blocked. */
	assert_int_equal(svc_guard_blocked(NULL, "192.0.2.1", "dave"), 0);
	assert_int_equal(svc_guard_failed(NULL, "192.0.2.1", "dave"), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_limit), cmocka_unit_test(test_address_limit), cmocka_unit_test(test_window),
		cmocka_unit_test(test_many_names), cmocka_unit_test(test_off),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
