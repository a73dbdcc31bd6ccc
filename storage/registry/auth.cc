#include "storage/registry/auth.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace paddock::storage::registry {

namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string QueryEscape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') out += static_cast<char>(c);
    else out += fmt::format("%{:02X}", c);
  }
  return out;
}

}  // namespace

Result<Challenge> ParseChallenge(std::string_view h) {
  auto bad = [&] {
    return Error(Code::kInvalidArgument, "WWW-Authenticate '{}' is not a challenge", h.substr(0, 200));
  };
  size_t i = 0;
  auto skip_ws = [&] {
    while (i < h.size() && (h[i] == ' ' || h[i] == '\t')) ++i;
  };
  skip_ws();
  size_t start = i;
  while (i < h.size() && h[i] != ' ' && h[i] != '\t' && h[i] != ',') ++i;
  Challenge c;
  c.scheme = Lower(h.substr(start, i - start));
  if (c.scheme.empty()) return bad();
  for (;;) {
    skip_ws();
    while (i < h.size() && (h[i] == ',' || h[i] == ' ')) ++i;
    if (i >= h.size()) return c;
    size_t name_start = i;
    while (i < h.size() && h[i] != '=' && h[i] != ',' && h[i] != ' ') ++i;
    std::string name = Lower(h.substr(name_start, i - name_start));
    skip_ws();
    if (i >= h.size() || h[i] != '=') {
      // A second challenge ("Basic realm=x, Bearer …") or a token68: stop here.
      return c;
    }
    ++i;
    skip_ws();
    std::string value;
    if (i < h.size() && h[i] == '"') {
      ++i;
      bool closed = false;
      while (i < h.size()) {
        char ch = h[i++];
        if (ch == '\\' && i < h.size()) {
          value += h[i++];
        } else if (ch == '"') {
          closed = true;
          break;
        } else {
          value += ch;
        }
      }
      if (!closed) return bad();
    } else {
      size_t v = i;
      while (i < h.size() && h[i] != ',' && h[i] != ' ') ++i;
      value = std::string(h.substr(v, i - v));
    }
    if (name.empty()) return bad();
    c.params[name] = value;
  }
}

bool MaySendCredentials(const Url& url) { return url.https || IsLoopbackHost(url.host); }

std::string BasicAuthorization(const Credentials& creds) {
  return "Basic " + Base64Encode(creds.username + ":" + creds.password);
}

Result<std::string> FetchBearerToken(const Challenge& challenge, const std::vector<std::string>& scopes,
                                     const Credentials& creds, const HttpGetOptions& http,
                                     Clock::time_point deadline, const std::string& who) {
  auto realm_it = challenge.params.find("realm");
  if (realm_it == challenge.params.end() || realm_it->second.empty())
    return Error(Code::kUnauthenticated, "{}: the registry's Bearer challenge names no realm (token server)", who);
  auto realm = Url::Parse(realm_it->second);
  if (!realm.ok())
    return Error(Code::kUnauthenticated, "{}: the registry's token realm '{}' is not an http(s) URL", who,
                 realm_it->second.substr(0, 200));
  Url url = *realm;
  std::string query;
  auto add = [&](const std::string& k, const std::string& v) {
    query += (query.empty() ? "" : "&") + k + "=" + QueryEscape(v);
  };
  if (auto s = challenge.params.find("service"); s != challenge.params.end()) add("service", s->second);
  std::vector<std::string> all;
  if (auto s = challenge.params.find("scope"); s != challenge.params.end()) {
    // Several scopes may come space-separated in one parameter.
    std::string_view v = s->second;
    while (!v.empty()) {
      size_t sp = v.find(' ');
      if (sp != 0) all.emplace_back(v.substr(0, sp));
      if (sp == std::string_view::npos) break;
      v.remove_prefix(sp + 1);
    }
  }
  for (const auto& s : scopes)
    if (std::find(all.begin(), all.end(), s) == all.end()) all.push_back(s);
  for (const auto& s : all) add("scope", s);
  if (!query.empty()) url.target += (url.target.find('?') == std::string::npos ? "?" : "&") + query;

  const std::string server = fmt::format("the token server {}", url.Authority());
  HttpHeaders headers{{"Accept", "application/json"}};
  if (!creds.empty()) {
    if (!MaySendCredentials(url))
      return Error(Code::kPermissionDenied,
                   "{}: refusing to send credentials over plain HTTP to {} (the registry's token realm); "
                   "credentials go only over TLS or to loopback hosts",
                   who, url.Authority());
    headers.emplace_back("Authorization", BasicAuthorization(creds));
  }
  auto r = HttpGet(url, headers, deadline, http);
  if (!r.ok()) return r.status().Prefix(fmt::format("{}: asking {} for a token", who, server));
  auto& resp = *r;
  unsigned s = resp->status();
  if (s == 401 || s == 403)
    return Error(Code::kUnauthenticated, "{}: {} refused {} (HTTP {})", who, server,
                 creds.empty() ? "an anonymous token" : fmt::format("the credentials for user '{}'", creds.username), s);
  if (s < 200 || s >= 300)
    return Error(s >= 500 ? Code::kUnavailable : Code::kUnauthenticated, "{}: {} answered HTTP {} to the token request",
                 who, server, s);
  auto body = resp->ReadAll(kMaxTokenResponseBytes, fmt::format("{}'s answer", server));
  if (!body.ok()) return body.status().Prefix(who);
  auto j = nlohmann::json::parse(*body, nullptr, false);
  std::string token;
  if (j.is_object()) {
    for (const char* key : {"token", "access_token"})
      if (token.empty() && j.contains(key) && j[key].is_string()) token = j[key].get<std::string>();
  }
  if (token.empty())
    return Error(Code::kDataLoss, "{}: {} answered without a token (expected JSON with \"token\" or \"access_token\")",
                 who, server);
  for (char c : token)
    if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e)
      return Error(Code::kDataLoss, "{}: {} answered a token with characters a header cannot carry", who, server);
  return token;
}

}  // namespace paddock::storage::registry
