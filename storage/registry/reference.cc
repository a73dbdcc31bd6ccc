#include "storage/registry/reference.h"

#include <cctype>

#include "storage/digest.h"

namespace paddock::storage::registry {

namespace {

// A repository path component, as the distribution spec's grammar has it:
// [a-z0-9]+ joined by '.', '_', '__' or '-'+.
bool ValidComponent(std::string_view c) {
  if (c.empty() || !std::isalnum(static_cast<unsigned char>(c.front())) ||
      !std::isalnum(static_cast<unsigned char>(c.back())))
    return false;
  for (char ch : c)
    if (!(std::islower(static_cast<unsigned char>(ch)) || std::isdigit(static_cast<unsigned char>(ch)) ||
          ch == '.' || ch == '_' || ch == '-'))
      return false;
  return true;
}

bool ValidTag(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  if (!(std::isalnum(static_cast<unsigned char>(t[0])) || t[0] == '_')) return false;
  for (char ch : t)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '-')) return false;
  return true;
}

bool ValidHost(std::string_view h) {
  if (h.empty() || h.size() > 255) return false;
  for (char ch : h)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == ':' || ch == '[' ||
          ch == ']'))
      return false;
  return true;
}

}  // namespace

std::string Reference::ApiHost() const { return registry == "docker.io" ? "registry-1.docker.io" : registry; }

std::string Reference::str() const {
  std::string s = registry + "/" + repository;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

std::string Reference::DefaultName() const {
  if (tag.empty()) return "";
  return registry + "/" + repository + ":" + tag;
}

Result<Reference> ParseReference(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error(Code::kInvalidArgument, "image reference '{}' {}; expected [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:HEX]",
                 text, why);
  };
  if (text.empty() || text.size() > 512) return bad("is empty or too long");
  Reference ref;
  std::string_view rest = text;
  if (size_t at = rest.find('@'); at != std::string_view::npos) {
    auto d = Digest::Parse(rest.substr(at + 1));
    if (!d.ok() || rest.substr(at + 1).rfind("sha256:", 0) != 0) return bad("has a digest that is not sha256:<64 hex>");
    ref.digest = d->str();
    rest = rest.substr(0, at);
  }
  size_t slash = rest.find('/');
  std::string_view first = slash == std::string_view::npos ? std::string_view{} : rest.substr(0, slash);
  if (!first.empty() &&
      (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos || first == "localhost")) {
    if (!ValidHost(first)) return bad("has an invalid registry host");
    ref.registry = std::string(first);
    rest = rest.substr(slash + 1);
  } else {
    ref.registry = "docker.io";
  }
  // The tag follows the last ':' after the last '/'.
  size_t last_slash = rest.rfind('/');
  size_t colon = rest.rfind(':');
  if (colon != std::string_view::npos && (last_slash == std::string_view::npos || colon > last_slash)) {
    ref.tag = std::string(rest.substr(colon + 1));
    rest = rest.substr(0, colon);
    if (!ValidTag(ref.tag)) return bad("has an invalid tag");
  }
  if (rest.empty()) return bad("has no repository");
  size_t start = 0;
  while (start <= rest.size()) {
    size_t end = rest.find('/', start);
    std::string_view c = rest.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (!ValidComponent(c)) return bad("has an invalid repository (lowercase letters, digits, '.', '_', '-' and '/')");
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  ref.repository = std::string(rest);
  if (ref.registry == "docker.io" && ref.repository.find('/') == std::string::npos)
    ref.repository = "library/" + ref.repository;
  if (ref.tag.empty() && ref.digest.empty()) ref.tag = "latest";
  return ref;
}

}  // namespace paddock::storage::registry
