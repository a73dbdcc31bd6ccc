// Content digests: "sha256:<64 lowercase hex>", computed with OpenSSL EVP.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "sandbox/base/status.h"

namespace paddock::storage {

// A validated sha256 digest. Only Parse() and Sha256::Finish() make one, so a
// Digest's hex is always 64 lowercase hex characters (safe as a file name).
class Digest {
 public:
  Digest() = default;
  // Accepts "sha256:<hex>" (and, for convenience, bare 64-char hex).
  static Result<Digest> Parse(std::string_view text);
  static Digest FromHex(std::string hex);  // caller guarantees 64 lowercase hex
  const std::string& hex() const { return hex_; }
  std::string str() const { return "sha256:" + hex_; }
  std::string Short() const { return hex_.substr(0, 12); }
  bool empty() const { return hex_.empty(); }
  bool operator==(const Digest& o) const { return hex_ == o.hex_; }
  bool operator<(const Digest& o) const { return hex_ < o.hex_; }

 private:
  std::string hex_;
};

// Streaming sha256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  Digest Finish();
  static Digest Of(std::string_view data);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

bool IsHex64(std::string_view s);

}  // namespace paddock::storage
