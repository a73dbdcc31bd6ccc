#include "rollout/service/auth.h"

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

Result<std::string> LoadTokenFile(const std::string& path) {
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
