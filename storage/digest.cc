#include "storage/digest.h"

#include <openssl/evp.h>

namespace paddock::storage {

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Result<Digest> Digest::Parse(std::string_view text) {
  std::string_view hex = text;
  if (hex.substr(0, 7) == "sha256:") hex.remove_prefix(7);
  if (!IsHex64(hex))
    return Error(Code::kInvalidArgument, "'{}' is not a sha256 digest (want sha256:<64 hex>)", text);
  return FromHex(std::string(hex));
}

Digest Digest::FromHex(std::string hex) {
  Digest d;
  d.hex_ = std::move(hex);
  return d;
}

struct Sha256::Impl {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Impl() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) { EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr); }
Sha256::~Sha256() = default;

void Sha256::Update(const void* data, size_t n) { EVP_DigestUpdate(impl_->ctx, data, n); }

Digest Sha256::Finish() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(impl_->ctx, md, &len);
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  hex.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    hex.push_back(kHex[md[i] >> 4]);
    hex.push_back(kHex[md[i] & 15]);
  }
  EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr);
  return Digest::FromHex(std::move(hex));
}

Digest Sha256::Of(std::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.Finish();
}

}  // namespace paddock::storage
