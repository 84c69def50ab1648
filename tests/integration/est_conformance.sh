#!/bin/bash
# EST conformance (issue 17), each point decided by openssl or curl, not by
# our own code:
#  1. /serverkeygen with AsymmetricDecryptKeyIdentifier: the key comes back as
#     RFC 7030 §4.4.2 has it — an EnvelopedData (openssl cms -decrypt with the
#     client's key) holding a SignedData by the CA (openssl cms -verify
#     -CAfile) of an asymmetric key package (id-ct-KP-aKeyPackage) with the
#     PKCS#8 key of the certificate; for an RSA (ktri) and an EC (kari)
#     client certificate.
#  2. ... but only to a client certificate whose key usage allows it: the
#     signing profile's certificates are refused (400), nothing stored.
#  3. A request for symmetric encryption (DecryptKeyIdentifier) is refused
#     (400), never answered with the key in clear; nothing stored.
#  4. HEAD is GET without the body on every GET resource: same status,
#     Content-Type and Content-Length, no body (curl -I and a raw request).
#  5. /csrattrs says what each profile accepts (openssl asn1parse).
. "$(dirname "$0")/lib.sh"

: "${ENROLL_TOOL:?set by meson}"
provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Conformance Test CA,O=Example'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
export P11ESCROW_PASSWORD=admin-password-0001
start_daemon 1
EST=$URL/.well-known/est

otp() {
    "$ESC" enroll-password create --subject 'CN=Conformance User,O=Example' --profile "$1" --user admin >"$T/otp.txt" ||
        fail "enroll-password create"
    printf '%s:%s' "$(awk '$1 == "name:" {print $2}' "$T/otp.txt")" "$(awk '$1 == "password:" {print $2}' "$T/otp.txt")"
}
rows() { psql_val "SELECT (SELECT count(*) FROM certificates) || ' ' || (SELECT count(*) FROM archive_records)"; }
# post PATH BODY_FILE [curl args...]: a PKCS#10 POST; prints the status; body $T/resp, headers $T/resp.h
post() {
    local path=$1 body=$2; shift 2
    curl -sS --cacert "$SERVER_CA" -o "$T/resp" -D "$T/resp.h" -w '%{http_code}' \
        -H 'Content-Type: application/pkcs10' --data-binary @"$body" "$@" "$EST/$path"
}
# csr OUT.b64 [ATTR-OID HEX]: a throwaway P-256 CSR (base64 DER), with an OCTET STRING attribute if given
csr() {
    python3 - "$@" <<'PY'
import sys, base64
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP256R1())
b = x509.CertificateSigningRequestBuilder().subject_name(
    x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Conformance User")]))
if len(sys.argv) > 3:
    b = b.add_attribute(x509.ObjectIdentifier(sys.argv[2]), bytes.fromhex(sys.argv[3]), _tag=_ASN1Type.OctetString)
der = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
open(sys.argv[1], "w").write(base64.encodebytes(der).decode())
PY
}
ski() { openssl x509 -in "$1" -noout -ext subjectKeyIdentifier | sed -n '2s/[ :]//gp'; }
# split: the multipart response $T/resp into $T/part1.b64 (key) and $T/part2.b64 (certificate)
split() {
    local b
    b=$(sed -n 's/^[Cc]ontent-[Tt]ype: multipart\/mixed; *boundary=\([^;[:space:]]*\).*/\1/p' "$T/resp.h" | tr -d '\r')
    [ -n "$b" ] || fail "not a multipart response: $(cat "$T/resp.h")"
    rm -f "$T"/part*.b64 "$T"/part*.h
    tr -d '\r' <"$T/resp" | awk -v b="--$b" -v d="$T" '
        $0 == b || $0 == b "--" { n++; body = 0; next }
        body { print > (d "/part" n ".b64"); next }
        $0 == "" { body = 1; next }
        { print > (d "/part" n ".h") }'
}

note "client certificates: the signing profile's (signing only), and two that can receive keys"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/sign.key" \
    -subj '/CN=Conformance User/O=Example' -outform DER 2>/dev/null | openssl base64 >"$T/sign.b64"
[ "$(post signing/simpleenroll "$T/sign.b64" --user "$(otp signing)")" = 200 ] || fail "signing enrollment: $(cat "$T/resp")"
openssl base64 -d -in "$T/resp" | openssl pkcs7 -inform DER -print_certs -out "$T/sign.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/rsa.key" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/ecka.key" 2>/dev/null
"$ENROLL_TOOL" client-cert "$DB" "$PIN_FILE" 'critical,digitalSignature,keyEncipherment' \
    'CN=Conformance User,O=Example' "$T/rsa.key" "$T/rsa.pem" >"$T/out" 2>&1 || fail "enroll_tool client-cert (RSA)"
"$ENROLL_TOOL" client-cert "$DB" "$PIN_FILE" 'critical,digitalSignature,keyAgreement' \
    'CN=Conformance User,O=Example' "$T/ecka.key" "$T/ecka.pem" >"$T/out" 2>&1 || fail "enroll_tool client-cert (EC)"
for c in sign rsa ecka; do
    openssl verify -CAfile "$SERVER_CA" -purpose sslclient "$T/$c.pem" >/dev/null || fail "$c.pem is no TLS client certificate"
done

note "1. the key encrypted to the client certificate: EnvelopedData { SignedData by the CA { key package } }"
AKID=1.2.840.113549.1.9.16.2.54
for c in rsa ecka; do
    csr "$T/kid-$c.b64" "$AKID" "$(ski "$T/$c.pem")"
    before=$(rows)
    code=$(post serverkeygen "$T/kid-$c.b64" --cert "$T/$c.pem" --key "$T/$c.key")
    [ "$code" = 200 ] || fail "$c: serverkeygen with AsymmetricDecryptKeyIdentifier: $code $(cat "$T/resp")"
    split
    grep -qi '^Content-Type: application/pkcs7-mime; *smime-type=server-generated-key' "$T/part1.h" ||
        fail "$c: the key part's type: $(cat "$T/part1.h")"
    openssl base64 -d -in "$T/part1.b64" -out "$T/key-$c.p7"
    openssl base64 -d -in "$T/part2.b64" | openssl pkcs7 -inform DER -print_certs -out "$T/new-$c.pem"
    openssl verify -CAfile "$SERVER_CA" "$T/new-$c.pem" >/dev/null || fail "$c: the new certificate does not verify"
    openssl cms -cmsout -print -inform DER -in "$T/key-$c.p7" >"$T/out"
    assert_out "contentType: pkcs7-envelopedData"
    grep -A3 'encryptedContentInfo:' "$T/out" | grep_q 'contentType: pkcs7-signedData' ||
        fail "$c: the EnvelopedData does not say it holds a SignedData"
    openssl cms -decrypt -binary -inform DER -in "$T/key-$c.p7" -recip "$T/$c.pem" -inkey "$T/$c.key" \
        -out "$T/signed-$c.der" || fail "$c: openssl cms -decrypt"
    openssl cms -cmsout -print -inform DER -in "$T/signed-$c.der" >"$T/out" || fail "$c: the content is no CMS"
    assert_out "contentType: pkcs7-signedData"
    grep -q "eContentType: .*2\.16\.840\.1\.101\.2\.1\.2\.78\.5" "$T/out" || fail "$c: the SignedData is no id-ct-KP-aKeyPackage"
    # Signed by the CA.  -purpose any: the CA certificate's keyUsage is keyCertSign, cRLSign only, which
    # openssl's default (S/MIME signing) purpose check refuses for any signer; the signature and chain are checked.
    openssl cms -verify -binary -inform DER -in "$T/signed-$c.der" -CAfile "$SERVER_CA" -purpose any \
        -out "$T/pkg-$c.der" 2>"$T/out" || fail "$c: openssl cms -verify"
    assert_out "Verification successful"
    openssl cms -verify -binary -inform DER -in "$T/signed-$c.der" -CAfile "$SERVER_CA" -purpose any \
        -certsout "$T/signer-$c.pem" -out /dev/null 2>/dev/null
    [ "$(openssl x509 -in "$T/signer-$c.pem" -noout -fingerprint -sha256)" = \
      "$(openssl x509 -in "$SERVER_CA" -noout -fingerprint -sha256)" ] || fail "$c: not signed with the CA certificate"
    # AsymmetricKeyPackage: SEQUENCE OF OneAsymmetricKey, one: the PKCS#8 key of the new certificate.
    openssl asn1parse -inform DER -in "$T/pkg-$c.der" >"$T/pkg.txt"
    sed -n 1p "$T/pkg.txt" | grep_q ':d=0 .*cons: SEQUENCE' && sed -n 2p "$T/pkg.txt" | grep_q ':d=1 .*cons: SEQUENCE' &&
        [ "$(grep -c ':d=1 ' "$T/pkg.txt")" = 1 ] || fail "$c: the key package is not a SEQUENCE OF one OneAsymmetricKey"
    hl=$(sed -n '1s/.*hl= *\([0-9]*\).*/\1/p' "$T/pkg.txt")
    tail -c +$((hl + 1)) "$T/pkg-$c.der" >"$T/p8-$c.der"
    (umask 077; openssl pkey -inform DER -in "$T/p8-$c.der" -out "$T/gen-$c.key") || fail "$c: the key package holds no PKCS#8 key"
    [ "$(openssl pkey -in "$T/gen-$c.key" -pubout)" = "$(openssl x509 -in "$T/new-$c.pem" -noout -pubkey)" ] ||
        fail "$c: the key is not the new certificate's"
    set -- $before
    [ "$(rows)" = "$(($1 + 1)) $(($2 + 1))" ] || fail "$c: not issued and archived once: $before -> $(rows)"
done

note "2. a client certificate that cannot receive keys (the signing profile's): 400, nothing stored"
csr "$T/kid-sign.b64" "$AKID" "$(ski "$T/sign.pem")"
before=$(rows)
code=$(post serverkeygen "$T/kid-sign.b64" --cert "$T/sign.pem" --key "$T/sign.key")
[ "$code" = 400 ] || fail "encryption to a signing-only certificate: HTTP $code $(head -c 300 "$T/resp")"
grep -q "cannot receive encrypted keys" "$T/resp" || fail "reason: $(cat "$T/resp")"
[ "$(rows)" = "$before" ] || fail "a refused request stored something: $before -> $(rows)"

note "3. symmetric encryption asked for (DecryptKeyIdentifier): 400, never the key in clear, nothing stored"
csr "$T/sym.b64" 1.2.840.113549.1.9.16.2.37 0102030405060708
code=$(post serverkeygen "$T/sym.b64" --cert "$T/sign.pem" --key "$T/sign.key")
[ "$code" = 400 ] || fail "DecryptKeyIdentifier: HTTP $code"
grep -q "symmetric key" "$T/resp" || fail "reason: $(cat "$T/resp")"
! grep -qi 'application/pkcs8\|multipart' "$T/resp.h" "$T/resp" || fail "a key was returned"
code=$(post serverkeygen "$T/sym.b64" --user "$(otp encryption)")
[ "$code" = 400 ] || fail "DecryptKeyIdentifier with a one-time password: HTTP $code"
[ "$(rows)" = "$before" ] || fail "a refused request stored something: $before -> $(rows)"

note "4. HEAD: the GET answer's status and headers, no body"
for path in /.well-known/est/cacerts /.well-known/est/csrattrs /.well-known/est/signing/csrattrs /crl /ca.crt /healthz \
    /.well-known/est/nosuchop /api/v1/whoami; do
    args=(); case $path in /api/*) args=(--user admin:admin-password-0001) ;; esac
    get=$(curl -sS --cacert "$SERVER_CA" "${args[@]}" -o "$T/get.body" -D "$T/get.h" -w '%{http_code}' "$URL$path")
    head=$(curl -sS --cacert "$SERVER_CA" "${args[@]}" -I -o "$T/head.h" -w '%{http_code}' "$URL$path")
    [ "$head" = "$get" ] || fail "HEAD $path: HTTP $head, GET: $get"
    len=$(sed -n 's/^[Cc]ontent-[Ll]ength: *\([0-9]*\).*/\1/p' "$T/head.h")
    [ "$len" = "$(stat -c %s "$T/get.body")" ] || fail "HEAD $path: Content-Length '$len', the GET body has $(stat -c %s "$T/get.body")"
    [ "$(grep -i '^Content-Type:' "$T/head.h")" = "$(grep -i '^Content-Type:' "$T/get.h")" ] || fail "HEAD $path: Content-Type"
done
# HEAD where GET is not allowed: 405, Allow names POST.
code=$(curl -sS --cacert "$SERVER_CA" -I -o "$T/head.h" -w '%{http_code}' "$EST/serverkeygen")
[ "$code" = 405 ] && grep -qi '^Allow: POST' "$T/head.h" || fail "HEAD serverkeygen: $code $(cat "$T/head.h")"
# 405 for a GET resource lists HEAD with GET.
curl -sS --cacert "$SERVER_CA" -X DELETE -o /dev/null -D "$T/del.h" "$EST/cacerts"
grep -qi '^Allow: GET, HEAD' "$T/del.h" || fail "DELETE cacerts: Allow $(grep -i '^Allow' "$T/del.h")"
# Raw, on one connection: HEAD then GET; no body may follow the HEAD answer, or the GET's would be misread.
port=${URL##*:}
{ printf 'HEAD /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
  printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'; sleep 2; } |
    openssl s_client -quiet -connect "127.0.0.1:$port" -CAfile "$SERVER_CA" >"$T/raw.crlf" 2>/dev/null ||
    true # (s_client's status is that of the connection the server closed as asked)
tr -d '\r' <"$T/raw.crlf" >"$T/raw"
awk 'NR == 1 && $2 != 200 { exit 1 } /^$/ { getline; print; exit }' "$T/raw" >"$T/after" || fail "raw HEAD: $(head -n 3 "$T/raw")"
grep -q '^HTTP/1.1 200' "$T/after" || fail "raw HEAD: something other than the next response followed its headers: $(cat -A "$T/raw" | head -c 1500)"
[ "$(grep -c '^HTTP/1.1 ' "$T/raw")" = 2 ] && tail -n 1 "$T/raw" | grep_q -x ok || fail "raw HEAD + GET: $(cat "$T/raw")"

note "5. /csrattrs names every key each profile accepts (openssl asn1parse)"
for p in signing encryption encryption-rsa; do
    curl -sS --fail-with-body --cacert "$SERVER_CA" "$EST/$p/csrattrs" | openssl base64 -d |
        openssl asn1parse -inform DER >"$T/attrs-$p" || fail "$p/csrattrs does not decode"
    for want in ecdsa-with-SHA256 sha256WithRSAEncryption id-ecPublicKey prime256v1 secp384r1 rsaEncryption; do
        grep -q ":$want\$" "$T/attrs-$p" || { cat "$T/attrs-$p" >&2; fail "$p/csrattrs lacks $want"; }
    done
    for bits in 0800 0C00 1000; do   # 2048, 3072, 4096
        grep -q "INTEGER *:$bits\$" "$T/attrs-$p" || { cat "$T/attrs-$p" >&2; fail "$p/csrattrs lacks RSA size 0x$bits"; }
    done
done
# What the signing profile accepts, it takes: an RSA-3072 and a P-384 request.
for k in rsa:3072 ec:secp384r1; do
    if [ "${k%%:*}" = rsa ]; then opt=(-newkey "rsa:${k#*:}"); else opt=(-newkey ec -pkeyopt "ec_paramgen_curve:${k#*:}"); fi
    openssl req -new "${opt[@]}" -nodes -keyout /dev/null -subj '/CN=Conformance User/O=Example' -outform DER \
        2>/dev/null | openssl base64 >"$T/k.b64"
    [ "$(post signing/simpleenroll "$T/k.b64" --user "$(otp signing)")" = 200 ] || fail "signing $k: $(cat "$T/resp")"
done

stop_daemon
exit 0
