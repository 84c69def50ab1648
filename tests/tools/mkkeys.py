#!/usr/bin/env python3
"""Test helper: many encryption keys with certificates, fast, for bulk-import tests.

mkkeys.py CA_DIR OUT_DIR:COUNT[:FIRST] ...

Makes (or reuses) a software CA in CA_DIR (ca.key, ca.pem) and writes COUNT
files OUT_DIR/kNNNNNN.pem, each an EC P-256 private key (PKCS#8 PEM) followed
by its certificate from that CA (keyUsage keyAgreement, an email SAN).  Keys
are numbered from FIRST (default 0), so two directories can share files by
giving overlapping ranges: the same number is the same key in both (the key
is derived from nothing; a file written once is copied, not regenerated).
Prints nothing; exits non-zero on error.
"""
import datetime
import os
import shutil
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def ca(dirname):
    key_path, cert_path = os.path.join(dirname, "ca.key"), os.path.join(dirname, "ca.pem")
    if os.path.exists(cert_path):
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(cert_path, "rb") as f:
            return key, x509.load_pem_x509_certificate(f.read())
    os.makedirs(dirname, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bulk Test Foreign CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Elsewhere")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def user(ca_key, ca_cert, n):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bulk User %06d" % n),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("bulk%06d@example.org" % n)]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: mkkeys.py CA_DIR OUT_DIR:COUNT[:FIRST] ...")
    ca_key, ca_cert = ca(argv[1])
    written = {}
    for spec in argv[2:]:
        parts = spec.split(":")
        out, count, first = parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
        os.makedirs(out, exist_ok=True)
        for n in range(first, first + count):
            path = os.path.join(out, "k%06d.pem" % n)
            if n in written:
                shutil.copyfile(written[n], path)
                continue
            with open(path, "wb") as f:
                f.write(user(ca_key, ca_cert, n))
            written[n] = path


if __name__ == "__main__":
    main(sys.argv)
