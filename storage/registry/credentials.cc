#include "storage/registry/credentials.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace paddock::storage::registry {

using nlohmann::json;

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// "https://host:5000/v2/" → "host:5000"; docker writes keys both ways.
std::string KeyHost(std::string key) {
  if (auto p = key.find("://"); p != std::string::npos) key = key.substr(p + 3);
  if (auto p = key.find('/'); p != std::string::npos) key.resize(p);
  return key;
}

bool SameRegistry(const std::string& key_host, const std::string& registry) {
  if (key_host == registry) return true;
  // Docker Hub goes by several names; docker login writes index.docker.io.
  auto hub = [](const std::string& h) {
    return h == "docker.io" || h == "index.docker.io" || h == "registry-1.docker.io";
  };
  return hub(key_host) && hub(registry);
}

}  // namespace

std::string Base64Encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (size_t rest = bytes.size() - i; rest > 0) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    if (rest == 2) v |= uint8_t(bytes[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

Result<std::string> Base64Decode(std::string_view text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : text) {
    if (c == '=') {
      ++pad;
      continue;
    }
    const char* p = c ? std::strchr(kAlphabet, c) : nullptr;
    if (!p || pad) return Error(Code::kInvalidArgument, "not base64");
    acc = (acc << 6) | static_cast<uint32_t>(p - kAlphabet);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (pad > 2) return Error(Code::kInvalidArgument, "not base64");
  return out;
}

Result<CredentialLookup> FindCredentials(std::string_view config_json, const std::string& registry,
                                         const std::string& source) {
  json doc = json::parse(config_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    return Error(Code::kInvalidArgument, "credentials file {} is not a JSON object (docker's config.json format: "
                 "{{\"auths\": {{\"HOST:PORT\": {{\"auth\": \"base64(user:password)\"}}}}}})", source);
  CredentialLookup out;
  if (doc.contains("auths")) {
    if (!doc["auths"].is_object())
      return Error(Code::kInvalidArgument, "credentials file {}: \"auths\" is not an object", source);
    for (const auto& [key, entry] : doc["auths"].items()) {
      if (!SameRegistry(KeyHost(key), registry)) continue;
      const std::string who = fmt::format("credentials file {}: the entry for {}", source, key);
      if (!entry.is_object()) return Error(Code::kInvalidArgument, "{} is not an object", who);
      if (entry.contains("auth") && entry["auth"].is_string() && !entry["auth"].get<std::string>().empty()) {
        auto decoded = Base64Decode(entry["auth"].get<std::string>());
        size_t colon = decoded.ok() ? decoded->find(':') : std::string::npos;
        if (colon == std::string::npos)
          return Error(Code::kInvalidArgument, "{}: \"auth\" is not base64 of user:password", who);
        out.creds = {decoded->substr(0, colon), decoded->substr(colon + 1)};
        return out;
      }
      if (entry.contains("username") || entry.contains("password")) {
        if (!entry.value("username", json()).is_string() || !entry.value("password", json()).is_string())
          return Error(Code::kInvalidArgument, "{}: \"username\" and \"password\" must both be strings", who);
        out.creds = {entry["username"].get<std::string>(), entry["password"].get<std::string>()};
        return out;
      }
      if (entry.contains("identitytoken"))
        out.note = fmt::format("{} holds an identity token (OAuth refresh), which paddock does not use", who);
      // An empty entry (docker login with a credential helper writes these): go on.
    }
  }
  std::string helper;
  if (doc.contains("credHelpers") && doc["credHelpers"].is_object())
    for (const auto& [key, h] : doc["credHelpers"].items())
      if (SameRegistry(KeyHost(key), registry) && h.is_string()) helper = h.get<std::string>();
  if (helper.empty() && doc.contains("credsStore") && doc["credsStore"].is_string())
    helper = doc["credsStore"].get<std::string>();
  if (!helper.empty() && out.note.empty())
    out.note = fmt::format("credentials file {} leaves {} to the credential helper docker-credential-{}, which "
                           "paddock does not run; speaking to it anonymously (put the credentials in a file for "
                           "--creds-file instead)", source, registry, helper);
  return out;
}

Result<CredentialLookup> ReadCredentialsFile(const std::string& path, const std::string& registry) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return Error(Code::kNotFound, "credentials file {} does not exist", path);
  if (!S_ISREG(st.st_mode) || st.st_size > (1 << 20))
    return Error(Code::kInvalidArgument, "credentials file {} is not a regular file of at most 1 MiB", path);
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) return Error(Code::kPermissionDenied, "cannot open credentials file {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) return Error(Code::kPermissionDenied, "cannot read credentials file {}", path);
  return FindCredentials(ss.str(), registry, path);
}

std::string RegistryOfReference(std::string_view ref) {
  size_t slash = ref.find('/');
  if (slash == std::string_view::npos) return "docker.io";
  std::string_view first = ref.substr(0, slash);
  if (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos || first == "localhost")
    return std::string(first);
  return "docker.io";
}

std::string DefaultDockerConfigPath() {
  if (const char* d = std::getenv("DOCKER_CONFIG"); d && *d) return std::string(d) + "/config.json";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.docker/config.json";
  return "";
}

}  // namespace paddock::storage::registry
