#!/usr/bin/env python3
"""Where p11escrowd's CPU goes per enrollment, from a perf profile with call graphs.

usage: perf_breakdown.py PERF.DATA [CPU_MS_PER_ENROLLMENT]

Each sample is put in the first category (in the order below) that one of its
frames belongs to, so nested work is counted once, in the most specific
place.  With the daemon's CPU milliseconds per enrollment (bench/run measures
them), each share is also shown in milliseconds.  Record with
`perf record --call-graph dwarf -p PID` (release builds have no frame pointers).
"""
import collections
import subprocess
import sys
if len(sys.argv) < 2:
    sys.exit(__doc__)
data = sys.argv[1]
out = subprocess.run(['perf', 'script', '-i', data, '-F', 'comm,tid,ip,sym'], capture_output=True, text=True).stdout
cats = [  # (name, predicate on set of symbols) - first match wins
 ('CA signature on the token (C_Sign)', lambda s: 'C_Sign' in s),
 ('transport ECDH on the token (C_DeriveKey)', lambda s: 'C_DeriveKey' in s),
 ('certificate building + signature check', lambda s: 'esc_ca_issue_ee' in s or 'esc_ca_issue' in s),
 ('certificates read from the DB: decode', lambda s: 'esc_store_get_cert' in s or 'esc_store_cert_from_text' in s),
 ('archive sealing: CMS to 2 KRAs + storage', lambda s: 'esc_envelope_seal' in s),
 ('transport envelope: CMS + PKCS#8 decode', lambda s: 'esc_keeper_open_transport' in s or 'open_transport' in s),
 ('TLS client certificate check', lambda s: 'est_authenticate' in s or 'esc_enroll_check_client_cert' in s),
 ('CMC request parse + CSR signature check', lambda s: 'esc_cmc_request_parse' in s),
 ('libpq (statements, client side)', lambda s: any(x.startswith('PQ') for x in s) or 'esc_store_exec' in s),
 ('archive: PKCS#8 encode, hashes, other', lambda s: 'esc_archive_key' in s or 'esc_archive_key_and' in s),
 ('response: certs-only + base64', lambda s: 'esc_certs_only_build' in s or 'esc_b64_encode' in s or 'reply_certs' in s),
 ('serverkeygen: key generation', lambda s: 'esc_profile_generate_key' in s),
 ('serverkeygen: response', lambda s: 'est_serverkeygen' in s),
 ('keeper boundary: messages, subject/key/certificate re-decoded', lambda s: any(x in s for x in ('remote_issue', 'serve_issue', 'remote_open_transport', 'serve_open_transport', 'esc_kp_encode', 'esc_kp_decode', 'esc_keeper_serve'))),
 ('PostgreSQL client wait / other database', lambda s: 'esc_store_commit' in s or 'esc_audit_append' in s),
 ('issuance: other', lambda s: 'esc_enroll_issue' in s),
 ('TLS + HTTP (libevent, OpenSSL records)', lambda s: any(x.startswith(('SSL_','bufferevent','evhttp','ssl3_','tls1')) for x in s)),
]
counts = collections.Counter(); total = 0
for block in out.split('\n\n'):
    lines = [l.strip() for l in block.strip().split('\n') if l.strip()]
    if not lines: continue
    syms = set()
    for l in lines[1:]:
        parts = l.split(None, 1)
        if len(parts) == 2: syms.add(parts[1].split('+')[0].strip())
    total += 1
    for name, pred in cats:
        if pred(syms):
            counts[name] += 1; break
    else:
        counts['other (kernel, allocator, idle loop)'] += 1
per_op = float(sys.argv[2]) if len(sys.argv) > 2 else None
for name, c in counts.most_common():
    pct = 100.0 * c / total
    print(f"{pct:5.1f}%  {name}" + (f"   {per_op * c / total:5.2f} ms" if per_op else ""))
print(total, "samples")
