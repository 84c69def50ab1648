#!/usr/bin/env python3
"""Median latency of record searches (GET /api/v1/records) through a running
p11escrowd, with a session token next to HTTP Basic, in one run.

Each mode sends N searches over one keep-alive TLS connection and reports
the median and p90 in milliseconds, as the client sees them.  With Basic
every call verifies the account's password (Argon2id); with a token, only
the login (POST /api/v1/session) does.  It reports; it never fails on a
missed target.

usage: session_search.py URL CA_FILE USER PASSWORD_FILE [N] [QUERY]
"""
import base64
import http.client
import json
import ssl
import statistics
import sys
import time
import urllib.parse


def connect(url, ca):
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=ca)
    return http.client.HTTPSConnection(u.hostname, u.port or 443, context=ctx, timeout=30), u.path.rstrip('/')


def timed(conn, method, path, auth, n):
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request(method, path, headers={'Authorization': auth, 'Accept': 'application/json'})
        resp = conn.getresponse()
        body = resp.read()
        samples.append((time.perf_counter() - t) * 1000.0)
        if resp.status != 200:
            sys.exit('%s %s: HTTP %d: %s' % (method, path, resp.status, body[:200]))
    return samples


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    url, ca, user, pwfile = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    query = sys.argv[6] if len(sys.argv) > 6 else ''
    with open(pwfile, encoding='utf-8') as f:
        password = f.readline().rstrip('\n')
    basic = 'Basic ' + base64.b64encode(('%s:%s' % (user, password)).encode()).decode()
    conn, prefix = connect(url, ca)
    path = prefix + '/api/v1/records' + query

    conn.request('POST', prefix + '/api/v1/session', headers={'Authorization': basic})
    resp = conn.getresponse()
    doc = json.loads(resp.read() or b'{}')
    if resp.status != 201:
        sys.exit('POST /session: HTTP %d: %s' % (resp.status, doc))
    bearer = 'Bearer ' + doc['token']

    timed(conn, 'GET', path, bearer, 3)  # warm-up: connection, prepared statements
    with_token = timed(conn, 'GET', path, bearer, n)
    with_basic = timed(conn, 'GET', path, basic, n)

    conn.request('DELETE', prefix + '/api/v1/session', headers={'Authorization': bearer})
    conn.getresponse().read()
    conn.close()

    def p90(s):
        return sorted(s)[max(0, int(round(0.9 * len(s))) - 1)]

    print('%d searches each (GET /api/v1/records), one keep-alive connection:' % n)
    print('  %-15s median %8.2f ms   p90 %8.2f ms' % ('session token', statistics.median(with_token), p90(with_token)))
    print('  %-15s median %8.2f ms   p90 %8.2f ms' % ('HTTP Basic', statistics.median(with_basic), p90(with_basic)))
    print('  target: token median under 10 ms: %s' % ('met' if statistics.median(with_token) < 10 else 'MISSED'))


if __name__ == '__main__':
    main()
