#include <openssl/evp.h>
#include <openssl/sha.h>

#include "replay/trajectory_log.h"

namespace paddock::replay {

namespace {

// SHA-256 fetched from OpenSSL's provider once. OpenSSL 3's one-shot SHA256()
// looks the algorithm up by name on every call (a lock, a string copy and a
// hash-table lookup), which cost more than hashing a request of a few hundred
// bytes; every keyed call hashes its request, fast-forwarded ones included.
const EVP_MD* Sha256() {
  static const EVP_MD* md = [] {
    const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return fetched ? fetched : EVP_sha256();
  }();
  return md;
}

}  // namespace

std::string RequestFingerprint(std::string_view canonical_request) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  unsigned int len = 0;
  if (EVP_Digest(canonical_request.data(), canonical_request.size(), digest, &len, Sha256(), nullptr) != 1 ||
      len != SHA256_DIGEST_LENGTH)  // out of memory for the context: the one-shot path
    SHA256(reinterpret_cast<const unsigned char*>(canonical_request.data()), canonical_request.size(), digest);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * SHA256_DIGEST_LENGTH);
  for (unsigned char byte : digest) {
    out.push_back(kHex[byte >> 4]);
    out.push_back(kHex[byte & 15]);
  }
  return out;
}

}  // namespace paddock::replay
