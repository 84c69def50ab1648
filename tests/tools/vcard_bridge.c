/*
 * Test tool: a virtual CAC smart card (libcacard, keys in an NSS database)
 * behind vsmartcard's PC/SC reader driver vpcd, so that OpenSC's PKCS#11
 * module can drive a card through pcscd like a real one.  Not installed.
 *
 *   vcard_bridge --db DIR --cert NICK [--cert NICK]... [--port N] [--verbose]
 *
 * libcacard emulates the card from the certificates NICK (at most three, one
 * per CAC slot) in the NSS database DIR and their private keys; the
 * database's password is the card's PIN.  libcacard has no PC/SC front end,
 * so this program is the "virtual ICC" of vpcd's socket protocol: it
 * connects to vpcd on 127.0.0.1:N (default 35963, vpcd's own default),
 * retrying every 100 ms until vpcd listens, and again whenever vpcd drops
 * the connection, until it is killed (SIGTERM).  tests/harness/vcard runs it
 * in the network namespace of its private pcscd, so every test can use the
 * default port and nothing outside that namespace can reach vpcd.
 *
 * The protocol (virtualsmartcard/src/vpcd/vpcd.c): every message is a
 * 2-byte big-endian length and that many bytes.  A 1-byte message is a
 * control command: 0x00 power off, 0x01 power on, 0x02 reset (no answer),
 * 0x04 get ATR (answered with the ATR).  A longer message is a command APDU,
 * answered with the response APDU.  An answer must never be empty: vpcd
 * takes a zero length for a removed card.
 *
 * APDU data is never printed: VERIFY carries the PIN; --verbose prints each
 * APDU's header and status word only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libcacard.h>

#define MAX_CERTS 3 /* CAC's three PKI slots */
#define MAX_NICK 64
#define MAX_MSG 0xffff /* the length field's limit */
#define READER_NAME "p11escrow-vcard"
#define VPCD_PORT 35963 /* vpcd's default (0x8C7B) */

enum ctl { CTL_OFF = 0x00, CTL_ON = 0x01, CTL_RESET = 0x02, CTL_ATR = 0x04 };

static int verbose;

static void
say(const char *fmt, ...)
{
	va_list ap;

	fputs("vcard_bridge: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int
usage(void)
{
	fputs("usage: vcard_bridge --db DIR --cert NICK [--cert NICK]... [--port N] [--verbose]\n", stderr);
	return 2;
}

/* Nicknames go into libcacard's option string between commas and
 * parentheses: letters, digits and ._- only. */
static int
nick_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > MAX_NICK)
		return 0;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static int
read_full(int fd, unsigned char *buf, size_t len)
{
	size_t done = 0;
	ssize_t k;
	int one = 1;

	while (done < len) {
		/* Debian 12's vpcd writes a message's length and its body separately, and
		 * with Nagle's algorithm the body waits for our ACK of the length:
		 * acknowledge at once (the kernel drops back to delayed ACKs after
		 * a while, so ask again before every read). */
		(void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
		k = read(fd, buf + done, len - done);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		done += (size_t)k;
	}
	return 0;
}

static int
write_full(int fd, const unsigned char *buf, size_t len)
{
	size_t done = 0;
	ssize_t k;

	while (done < len) {
		k = send(fd, buf + done, len - done, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		done += (size_t)k;
	}
	return 0;
}

/* One length-prefixed message to vpcd in one write (two would wait for
 * each other's ACK); len is 1..MAX_MSG. */
static int
send_msg(int fd, const unsigned char *data, size_t len)
{
	static unsigned char out[2 + MAX_MSG];

	out[0] = (unsigned char)(len >> 8);
	out[1] = (unsigned char)len;
	memcpy(out + 2, data, len);
	return write_full(fd, out, len + 2);
}

static int
answer_atr(int fd, VReader *reader)
{
	unsigned char atr[64];
	int len = (int)sizeof(atr);

	if (vreader_card_is_present(reader) != VREADER_OK) {
		say("no card in the virtual reader");
		return -1;
	}
	/* Not vreader_power_on(), which would also reset the card: vpcd asks
	 * for the ATR each time pcscd polls for the card.  An NSS-emulated
	 * card's ATR is libcacard's fixed one. */
	vcard_emul_get_atr(NULL, atr, &len);
	if (len <= 0)
		return -1;
	return send_msg(fd, atr, (size_t)len);
}

static int
control(int fd, VReader *reader, unsigned char cmd)
{
	switch (cmd) {
	case CTL_OFF:
		return vreader_power_off(reader) == VREADER_OK ? 0 : -1;
	case CTL_ON:
		return vreader_power_on(reader, NULL, NULL) == VREADER_OK ? 0 : -1;
	case CTL_RESET:
		if (vreader_power_off(reader) != VREADER_OK)
			return -1;
		return vreader_power_on(reader, NULL, NULL) == VREADER_OK ? 0 : -1;
	case CTL_ATR:
		return answer_atr(fd, reader);
	default:
		say("unknown control command 0x%02x", cmd);
		return -1;
	}
}

static int
apdu(int fd, VReader *reader, unsigned char *cmd, size_t len, unsigned char *rsp, size_t rsp_size)
{
	int rlen = (int)rsp_size;
	VReaderStatus st;

	st = vreader_xfr_bytes(reader, cmd, (int)len, rsp, &rlen);
	if (st != VREADER_OK || rlen < 2) {
		say("APDU %02x %02x %02x %02x: libcacard status %d, %d bytes; answering 6F00", cmd[0], cmd[1],
		    len > 2 ? cmd[2] : 0, len > 3 ? cmd[3] : 0, (int)st, rlen);
		rsp[0] = 0x6f;
		rsp[1] = 0x00;
		rlen = 2;
	}
	if (verbose)
		say("APDU %02x %02x %02x %02x (%zu bytes) -> %02x%02x (%d bytes)", cmd[0], cmd[1], len > 2 ? cmd[2] : 0,
		    len > 3 ? cmd[3] : 0, len, rsp[rlen - 2], rsp[rlen - 1], rlen);
	return send_msg(fd, rsp, (size_t)rlen);
}

/* Serve one vpcd connection until it closes or breaks the protocol. */
static void
serve(int fd, VReader *reader, unsigned char *buf, unsigned char *rsp)
{
	unsigned char hdr[2];
	size_t len;

	for (;;) {
		if (read_full(fd, hdr, sizeof(hdr)) != 0)
			return; /* vpcd closed the connection */
		len = (size_t)hdr[0] << 8 | hdr[1];
		if (len == 0) {
			say("empty message from vpcd");
			return;
		}
		if (read_full(fd, buf, len) != 0) {
			say("vpcd closed the connection inside a message");
			return;
		}
		if (len == 1 ? control(fd, reader, buf[0]) != 0 : apdu(fd, reader, buf, len, rsp, MAX_MSG) != 0) {
			say("dropping the connection");
			return;
		}
		/* The command may hold the PIN (VERIFY). */
		memset(buf, 0, len);
	}
}

/* A TCP connection to vpcd on 127.0.0.1:port, or -1 (errno set). */
static int
connect_vpcd(uint16_t port)
{
	struct sockaddr_in sa;
	int fd, one = 1;

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* Each message is one small write that vpcd waits for: no Nagle delay. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int
main(int argc, char *argv[])
{
	const char *db = NULL, *certs[MAX_CERTS];
	int ncerts = 0, i, fd, n, waiting = 0;
	char opts[1024], *end;
	size_t off;
	unsigned long port = VPCD_PORT;
	VCardEmulOptions *options;
	VReader *reader;
	unsigned char *buf, *rsp;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--db") == 0 && i + 1 < argc) {
			db = argv[++i];
		} else if (strcmp(argv[i], "--cert") == 0 && i + 1 < argc) {
			if (ncerts == MAX_CERTS) {
				say("at most %d certificates (CAC has %d slots)", MAX_CERTS, MAX_CERTS);
				return 2;
			}
			if (!nick_ok(argv[i + 1])) {
				say("certificate nickname '%s': 1 to %d of A-Z a-z 0-9 . _ -", argv[i + 1], MAX_NICK);
				return 2;
			}
			certs[ncerts++] = argv[++i];
		} else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
			errno = 0;
			port = strtoul(argv[++i], &end, 10);
			if (errno != 0 || *end != '\0' || port == 0 || port > 65535) {
				say("--port: 1 to 65535");
				return 2;
			}
		} else if (strcmp(argv[i], "--verbose") == 0) {
			verbose = 1;
		} else {
			return usage();
		}
	}
	if (db == NULL || ncerts == 0)
		return usage();
	if (strchr(db, '"') != NULL || strlen(db) > 512) {
		say("--db: at most 512 characters, no '\"'");
		return 2;
	}

	/* libcacard's options: the NSS database, no hardware tokens, one soft
	 * card (NSS slot "" is the database's internal key slot) of type CAC
	 * in the virtual reader READER_NAME. */
	n = snprintf(opts, sizeof(opts), "db=\"sql:%s\" use_hw=no soft=(," READER_NAME ",CAC,", db);
	if (n < 0 || (size_t)n >= sizeof(opts))
		return 2;
	off = (size_t)n;
	for (i = 0; i < ncerts; i++) {
		n = snprintf(opts + off, sizeof(opts) - off, ",%s", certs[i]);
		if (n < 0 || (size_t)n >= sizeof(opts) - off)
			return 2;
		off += (size_t)n;
	}
	if (off + 2 > sizeof(opts))
		return 2;
	memcpy(opts + off, ")", 2);

	options = vcard_emul_options(opts);
	if (options == NULL) {
		say("libcacard refused the options %s", opts);
		return 1;
	}
	if (vcard_emul_init(options) != VCARD_EMUL_OK) {
		say("vcard_emul_init failed: no NSS database in %s, or none of its certificates is named by --cert",
		    db);
		return 1;
	}
	reader = vreader_get_reader_by_name(READER_NAME);
	if (reader == NULL || vreader_card_is_present(reader) != VREADER_OK) {
		say("libcacard made no card from %s", db);
		return 1;
	}
	say("card with %d certificate(s) ready; connecting to vpcd on 127.0.0.1:%lu", ncerts, port);

	buf = malloc(MAX_MSG);
	rsp = malloc(MAX_MSG);
	if (buf == NULL || rsp == NULL) {
		say("out of memory");
		return 1;
	}
	/* Until killed: the harness stops this process by its PID. */
	for (;;) {
		fd = connect_vpcd((uint16_t)port);
		if (fd < 0) {
			if (errno != ECONNREFUSED) {
				say("connect to 127.0.0.1:%lu: %s", port, strerror(errno));
				return 1;
			}
			if (!waiting && verbose)
				say("vpcd not listening yet; retrying every 100 ms");
			waiting = 1;
			usleep(100 * 1000);
			continue;
		}
		waiting = 0;
		say("connected to vpcd");
		serve(fd, reader, buf, rsp);
		close(fd);
		say("vpcd closed the connection; reconnecting");
	}
}
