// SglangBackend's weight updates: SGLang's POST /update_weights_from_disk
// (answered {"success", "message", …}, with 400 when success is false) and
// its weight version, GET /model_info (SGLang ≥ 0.5; /get_weight_version on
// the versions before it). paddock-policy serves both.
#include <fmt/format.h>

#include "policy/backends/http_errors.h"
#include "policy/backends/json_fields.h"
#include "policy/backends/sglang_backend.h"

namespace paddock::policy {

Status SglangBackend::UpdateWeightsFromDisk(const std::string& path, const std::string& version,
                                            std::chrono::milliseconds timeout) {
  if (path.empty()) return Error(Code::kInvalidArgument, "weights path is empty");
  nlohmann::json body = {{"model_path", path}};
  if (!version.empty()) body["weight_version"] = version;
  const std::string where = endpoint().Authority() + endpoint().Target("/update_weights_from_disk");
  // 4xx comes back as a response: SGLang's success:false travels in a 400.
  PADDOCK_ASSIGN_OR_RETURN(HttpResponse res, Call("POST", "/update_weights_from_disk", body.dump(), timeout,
                                                  /*answer_4xx=*/true));
  auto json = nlohmann::json::parse(res.body, nullptr, /*allow_exceptions=*/false);
  const bool typed = json.is_object() && json.contains("success") && json["success"].is_boolean();
  if (!typed) {
    if (res.status >= 400) return StatusFromHttp(res.status, res.body, where);
    return Error(Code::kDataLoss, "answer from {} has no boolean 'success': {}", where, BodyExcerpt(res.body));
  }
  std::string message = json.contains("message") && json["message"].is_string() ? json["message"].get<std::string>()
                                                                                 : BodyExcerpt(res.body);
  if (json["success"].get<bool>()) return Status::Ok();
  if (res.status == 401) return Error(Code::kUnauthenticated, "{} refused the weight update: {}", where, message);
  if (res.status == 403) return Error(Code::kPermissionDenied, "{} refused the weight update: {}", where, message);
  return Error(Code::kFailedPrecondition, "{} did not load {}: {}", where, path, message);
}

Result<std::string> SglangBackend::WeightVersion() {
  constexpr std::chrono::milliseconds kTimeout{10000};
  auto res = Call("GET", "/model_info", "", kTimeout, /*answer_4xx=*/false);
  std::string path = "/model_info";
  if (!res.ok() && res.status().code() == Code::kNotFound) {
    path = "/get_weight_version";
    res = Call("GET", path, "", kTimeout, false);
  }
  if (!res.ok()) return res.status();
  const std::string where = endpoint().Authority() + endpoint().Target(path);
  PADDOCK_ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonBody(res->body, where));
  if (!json.is_object()) return TypeError("(answer)", "an object", json);
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* v, Field(json, "", "weight_version"));
  if (v->is_null()) return std::string();  // SGLang started without --weight-version before 0.5
  return AsString(*v, "weight_version");
}

}  // namespace paddock::policy
