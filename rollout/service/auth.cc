#include "rollout/service/auth.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

namespace paddock::service {

namespace {

// Constant-time comparison of equal-length tokens; a length mismatch may
// return early (the length is not the secret).
bool SameToken(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string Trim(std::string s) {
  const char* ws = " \t\r\n";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

}  // namespace

BearerTokenAuth::BearerTokenAuth(std::string token) : token_(std::move(token)) {}

grpc::Status BearerTokenAuth::Check(const grpc::ServerContext& ctx) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end())
    return {grpc::StatusCode::UNAUTHENTICATED,
            "this TCP listener requires a token: send metadata 'authorization: Bearer <token>' "
            "(paddock CLI: --token-file)"};
  std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kPrefix = "Bearer ";
  if (value.substr(0, kPrefix.size()) != kPrefix)
    return {grpc::StatusCode::UNAUTHENTICATED,
            "authorization metadata must have the form 'Bearer <token>'"};
  if (!SameToken(value.substr(kPrefix.size()), token_))
    return {grpc::StatusCode::UNAUTHENTICATED, "wrong token; use the content of paddockd's --token-file"};
  return grpc::Status::OK;
}

namespace {

Status CheckPrivate(const std::string& path, const char* what) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return ErrnoError(fmt::format("cannot read {} {}", what, path));
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    return Error(Code::kPermissionDenied,
                 "{} {} is open to other users (mode {:04o}); the secret must be private: `chmod 600 {}`", what,
                 path, st.st_mode & 07777, path);
  return Status::Ok();
}

Result<std::string> ReadText(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return ErrnoError(fmt::format("cannot read {} {}", what, path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().size() > (1u << 20)) return Error(Code::kInvalidArgument, "{} {} is larger than 1 MiB", what, path);
  return ss.str();
}

}  // namespace

Result<ServerTls> LoadServerTls(const std::string& cert_file, const std::string& key_file,
                                const std::string& client_ca_file) {
  ServerTls tls;
  PADDOCK_RETURN_IF_ERROR(CheckPrivate(key_file, "TLS key"));
  PADDOCK_ASSIGN_OR_RETURN(tls.cert_chain, ReadText(cert_file, "TLS certificate"));
  PADDOCK_ASSIGN_OR_RETURN(tls.private_key, ReadText(key_file, "TLS key"));
  if (tls.cert_chain.find("-----BEGIN CERTIFICATE-----") == std::string::npos)
    return Error(Code::kInvalidArgument, "TLS certificate {} holds no PEM certificate", cert_file);
  if (tls.private_key.find("PRIVATE KEY-----") == std::string::npos)
    return Error(Code::kInvalidArgument, "TLS key {} holds no PEM private key", key_file);
  if (!client_ca_file.empty()) {
    PADDOCK_ASSIGN_OR_RETURN(tls.client_ca, ReadText(client_ca_file, "client CA"));
    if (tls.client_ca.find("-----BEGIN CERTIFICATE-----") == std::string::npos)
      return Error(Code::kInvalidArgument, "client CA {} holds no PEM certificate", client_ca_file);
  }
  return tls;
}

Result<std::string> LoadTokenFile(const std::string& path) {
  PADDOCK_RETURN_IF_ERROR(CheckPrivate(path, "token file"));
  std::ifstream in(path);
  if (!in) return ErrnoError(fmt::format("cannot read token file {}", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string token = Trim(ss.str());
  if (token.empty())
    return Error(Code::kInvalidArgument, "token file {} is empty; put a random secret in it "
                 "(e.g. `head -c 32 /dev/urandom | base64 > {}`)", path, path);
  return token;
}

}  // namespace paddock::service
