#!/usr/bin/env bash
# A throwaway certificate authority for local TLS tests, made with the openssl CLI only.
#
#   source scripts/tls.sh; make_test_ca DIR     as a library (kafka.sh does this)
#   bash scripts/tls.sh DIR                     the same from the command line
#
# make_test_ca DIR writes, into DIR (created if missing):
#   ca.pem       the CA certificate (self-signed, "loadwave test CA"); give this to
#                clients as their trust anchor, e.g. librdkafka's ssl.ca.location
#   ca.key       the CA's private key (unencrypted PKCS#8)
#   broker.pem   a server certificate for IP 127.0.0.1 and DNS localhost, signed by the CA
#                (subjectAltName IP:127.0.0.1,DNS:localhost; extendedKeyUsage serverAuth)
#   broker.key   its private key, unencrypted PKCS#8 ("BEGIN PRIVATE KEY")
# Keys are RSA 2048 (the most widely accepted by Java, OpenSSL and rustls alike); the CA
# is valid for 10 years, the broker certificate for 825 days.
#
# It is idempotent: when all four files are there, the key matches the certificate, the
# certificate verifies against the CA for 127.0.0.1 and localhost, and both stay valid for
# more than a day, nothing is touched. Otherwise all four are made afresh (a new CA too), so
# a client holding an old ca.pem must re-read it. Concurrent callers on one DIR are
# serialised with flock when it is available. These keys protect nothing: never use them
# beyond 127.0.0.1.

# _tls_valid DIR: whether DIR holds a complete, consistent set valid for more than a day.
_tls_valid() {
  local dir=$1 f
  for f in ca.pem ca.key broker.pem broker.key; do
    [[ -s "$dir/$f" ]] || return 1
  done
  openssl x509 -in "$dir/ca.pem" -noout -checkend 86400 >/dev/null 2>&1 || return 1
  openssl x509 -in "$dir/broker.pem" -noout -checkend 86400 >/dev/null 2>&1 || return 1
  openssl verify -CAfile "$dir/ca.pem" -purpose sslserver -verify_ip 127.0.0.1 \
    "$dir/broker.pem" >/dev/null 2>&1 || return 1
  openssl verify -CAfile "$dir/ca.pem" -purpose sslserver -verify_hostname localhost \
    "$dir/broker.pem" >/dev/null 2>&1 || return 1
  [[ "$(openssl pkey -in "$dir/broker.key" -pubout 2>/dev/null)" == \
     "$(openssl x509 -in "$dir/broker.pem" -noout -pubkey 2>/dev/null)" ]] || return 1
  [[ "$(openssl pkey -in "$dir/ca.key" -pubout 2>/dev/null)" == \
     "$(openssl x509 -in "$dir/ca.pem" -noout -pubkey 2>/dev/null)" ]] || return 1
  head -n 1 "$dir/broker.key" | grep -q -- '-----BEGIN PRIVATE KEY-----' || return 1
}

# _tls_make DIR: makes the four files in a scratch directory, then moves them into DIR.
_tls_make() (
  set -euo pipefail
  local dir=$1 tmp
  tmp=$(mktemp -d "$dir/.make.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cd "$tmp"
  umask 077
  # The CA: a self-signed certificate allowed to sign certificates and nothing else.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=loadwave test CA" \
    -set_serial "0x$(openssl rand -hex 16)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out ca.pem
  # The broker: a leaf certificate for 127.0.0.1 and localhost, signed by the CA.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out broker.key 2>/dev/null
  openssl req -new -key broker.key -subj "/CN=localhost" -out broker.csr
  cat >broker.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
  openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -sha256 -days 825 \
    -set_serial "0x$(openssl rand -hex 16)" -extfile broker.ext -out broker.pem 2>/dev/null
  _tls_valid "$tmp" || { echo "error: the certificates made in $tmp do not verify" >&2; exit 1; }
  chmod 644 ca.pem broker.pem
  # Keys first, then certificates, so a reader never pairs a new certificate with an old key
  # for long; the set is only complete (and valid) once the last move is done.
  mv -f ca.key ca.pem broker.key broker.pem "$dir/"
)

# make_test_ca DIR: see the header.
make_test_ca() {
  local dir=${1:?usage: make_test_ca DIR}
  command -v openssl >/dev/null || { echo "error: openssl is needed to make test certificates" >&2; return 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  (
    if command -v flock >/dev/null; then
      exec 9>"$dir/.lock"
      flock 9
    fi
    _tls_valid "$dir" && exit 0
    echo "==> making a throwaway test CA and a broker certificate for 127.0.0.1 in $dir" >&2
    _tls_make "$dir"
  )
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  [[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
  make_test_ca "$1"
fi
