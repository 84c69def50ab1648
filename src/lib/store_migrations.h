/* The migrations embedded by sql/embed.py. */
#ifndef P11ESCROW_STORE_MIGRATIONS_H
#define P11ESCROW_STORE_MIGRATIONS_H

struct esc_migration {
	int version;
	const char *name;
	const char *sql;
};

extern const struct esc_migration esc_migrations[];
extern const unsigned esc_migrations_count;

#endif
