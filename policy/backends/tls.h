// TLS for https:// inference servers (DeepSeek's hosted API and the like):
// Boost.Beast's ssl_stream over OpenSSL, TLS 1.2 or newer, the peer's
// certificate always verified against a CA store and the endpoint's host name.
#pragma once

#include <memory>
#include <string>

#include <boost/asio/ssl/context.hpp>
#include <boost/system/error_code.hpp>
#include <openssl/ssl.h>

#include "sandbox/base/status.h"

namespace paddock::policy {

struct TlsOptions {
  // PEM file of CA certificates to trust instead of the system store.
  std::string ca_file;
  // PEM text of CA certificates to trust instead of the system store (tests: a
  // CA generated in memory). With ca_file too, both are trusted.
  std::string ca_pem;
  // Neither set: the system store (SSL_CTX_set_default_verify_paths; on Debian
  // /etc/ssl/certs, honouring SSL_CERT_FILE / SSL_CERT_DIR).
};

// A client context: TLS >= 1.2, verify_peer, the CAs `options` names.
// INVALID_ARGUMENT when a CA file or PEM cannot be loaded.
Result<std::shared_ptr<boost::asio::ssl::context>> MakeTlsClientContext(const TlsOptions& options);

// Prepares one connection to `host`: SNI (DNS names only, as RFC 6066 asks) and
// the certificate check against `host` (subjectAltName DNS or IP entry).
// INTERNAL if OpenSSL refuses.
Status ConfigureTlsConnection(SSL* ssl, const std::string& host);

// A failed handshake as a Status. A certificate that fails verification is
// PERMISSION_DENIED "TLS certificate verification failed for HOST: reason"
// (never worth retrying); any other failure is UNAVAILABLE "TLS handshake with
// HOST failed: …". `*retryable` says whether another attempt may succeed.
Status TlsHandshakeError(SSL* ssl, const std::string& host, const boost::system::error_code& ec,
                         bool* retryable);

}  // namespace paddock::policy
