#include "policy/backends/tls.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl/error.hpp>
#include <openssl/err.h>
#include <openssl/x509v3.h>

namespace paddock::policy {

namespace ssl = boost::asio::ssl;
using boost::system::error_code;

Result<std::shared_ptr<ssl::context>> MakeTlsClientContext(const TlsOptions& options) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  error_code ec;
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                       ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1,
                   ec);
  if (ec) return Error(Code::kInternal, "TLS: setting protocol options: {}", ec.message());
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  ctx->set_verify_mode(ssl::verify_peer, ec);
  if (ec) return Error(Code::kInternal, "TLS: enabling peer verification: {}", ec.message());
  if (options.ca_file.empty() && options.ca_pem.empty()) {
    ctx->set_default_verify_paths(ec);
    if (ec) return Error(Code::kInternal, "TLS: loading the system CA store: {}", ec.message());
  }
  if (!options.ca_file.empty()) {
    if (FILE* f = std::fopen(options.ca_file.c_str(), "r")) {
      std::fclose(f);
    } else {
      return Error(Code::kInvalidArgument, "TLS: cannot read CA file '{}': {}", options.ca_file,
                   std::strerror(errno));
    }
    ctx->load_verify_file(options.ca_file, ec);
    if (ec) {
      return Error(Code::kInvalidArgument, "TLS: cannot load CA file '{}' (PEM expected): {}",
                   options.ca_file, ec.message());
    }
  }
  if (!options.ca_pem.empty()) {
    ctx->add_certificate_authority(boost::asio::buffer(options.ca_pem), ec);
    if (ec) return Error(Code::kInvalidArgument, "TLS: cannot load the CA PEM: {}", ec.message());
  }
  return ctx;
}

Status ConfigureTlsConnection(SSL* ssl, const std::string& host) {
  error_code ec;
  boost::asio::ip::make_address(host, ec);
  const bool is_ip = !ec;
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (is_ip) {
    if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1) {
      return Error(Code::kInternal, "TLS: cannot set the expected IP address '{}'", host);
    }
  } else {
    if (SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) {
      return Error(Code::kInternal, "TLS: cannot set SNI '{}'", host);
    }
    if (SSL_set1_host(ssl, host.c_str()) != 1) {
      return Error(Code::kInternal, "TLS: cannot set the expected host name '{}'", host);
    }
  }
  return Status::Ok();
}

Status TlsHandshakeError(SSL* ssl, const std::string& host, const error_code& ec,
                         bool* retryable) {
  long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) {
    *retryable = false;
    return Error(Code::kPermissionDenied, "TLS certificate verification failed for {}: {}", host,
                 X509_verify_cert_error_string(verify));
  }
  // A protocol failure (the server speaks plain HTTP, no common cipher…) will
  // not go away on its own; a reset or a closed connection may.
  *retryable = ec.category() != boost::asio::error::get_ssl_category();
  return Error(Code::kUnavailable, "TLS handshake with {} failed: {}", host, ec.message());
}

}  // namespace paddock::policy
