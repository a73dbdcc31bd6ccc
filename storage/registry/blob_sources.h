// Where a blob was last seen on registries: "registry/repository" entries per
// blob digest, kept in the image store's ROOT/registry/blob-sources/<hex> (a
// small JSON list, newest first, at most 8). A pull records every blob of the
// manifest it pulled (fetched or already stored); a push records each blob it
// put or found, and asks for a cross-repository mount from a recorded repository on the
// same registry before uploading the blob again. Best effort: a missing or
// unreadable record only means no mount is tried.
#pragma once

#include <string>
#include <vector>

#include "storage/digest.h"
#include "storage/image_store.h"

namespace paddock::storage::registry {

// Repositories on `registry` recorded for `blob`, newest first, without `except_repository`.
std::vector<std::string> BlobSourcesOn(const ImageStore& store, const Digest& blob, const std::string& registry,
                                       const std::string& except_repository);
// Records that `registry`/`repository` holds `blob`; errors are ignored (logged at debug).
void RecordBlobSource(const ImageStore& store, const Digest& blob, const std::string& registry,
                      const std::string& repository);

}  // namespace paddock::storage::registry
