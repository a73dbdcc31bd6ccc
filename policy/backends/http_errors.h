// Maps a non-2xx HTTP answer from an inference server to a typed Status that
// carries the server's own message (OpenAI/vLLM/SGLang error bodies) or, failing
// that, an excerpt of the body.
#pragma once

#include <string>
#include <string_view>

#include "sandbox/base/status.h"

namespace paddock::policy {

// The human message in an error body: error.message, message, error, detail
// (FastAPI), else the first 200 bytes of the body with control bytes escaped.
std::string ServerErrorMessage(std::string_view body);

// A printable excerpt of at most `max` bytes.
std::string BodyExcerpt(std::string_view body, size_t max = 200);

// 400/422/other 4xx → INVALID_ARGUMENT, 401 → UNAUTHENTICATED, 403 →
// PERMISSION_DENIED, 404 → NOT_FOUND, 429 → RESOURCE_EXHAUSTED, 501 →
// UNIMPLEMENTED, other 5xx → UNAVAILABLE. `where` names the server and path.
Status StatusFromHttp(unsigned status, std::string_view body, std::string_view where);

}  // namespace paddock::policy
