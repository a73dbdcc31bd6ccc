#include "policy/backends/sglang_backend.h"

#include <algorithm>

#include <fmt/format.h>

#include "policy/backends/json_fields.h"

namespace paddock::policy {

Result<std::unique_ptr<SglangBackend>> SglangBackend::Create(BackendOptions options) {
  PADDOCK_ASSIGN_OR_RETURN(Endpoint ep, PrepareBackendOptions(options));
  return std::unique_ptr<SglangBackend>(new SglangBackend(std::move(ep), std::move(options)));
}

Result<nlohmann::json> SglangBackend::BuildBody(const GenerateRequest& request) const {
  if (request.input_ids.empty()) {
    return Error(Code::kInvalidArgument, "sglang /generate needs input_ids (got none)");
  }
  const SamplingParams& s = request.sampling;
  nlohmann::json sp = {{"max_new_tokens", s.max_new_tokens}};
  if (s.temperature) sp["temperature"] = *s.temperature;
  if (s.top_p) sp["top_p"] = *s.top_p;
  if (s.top_k) sp["top_k"] = *s.top_k;
  if (!s.stop_token_ids.empty()) sp["stop_token_ids"] = s.stop_token_ids;
  if (!s.stop.empty()) sp["stop"] = s.stop;
  if (s.seed) sp["sampling_seed"] = *s.seed;
  // Keep special tokens in `text` so it matches the ids (DSML markers are special).
  sp["skip_special_tokens"] = false;
  nlohmann::json body = {
      {"input_ids", request.input_ids},
      {"sampling_params", std::move(sp)},
      {"stream", false},
  };
  if (request.return_logprobs) {
    body["return_logprob"] = true;
    body["logprob_start_len"] = -1;  // output tokens only
  }
  return body;
}

Result<GenerateResult> SglangBackend::ParseBody(const nlohmann::json& body,
                                                const GenerateRequest& request) const {
  GenerateResult out;
  out.token_exact = true;
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* text, Field(body, "", "text"));
  PADDOCK_ASSIGN_OR_RETURN(out.text, AsString(*text, "text"));
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* meta, Field(body, "", "meta_info"));
  if (!meta->is_object()) return TypeError("meta_info", "an object", *meta);

  // Ids and logprobs from output_token_logprobs: [[logprob, token_id, text|null], …].
  std::vector<int32_t> ids_from_logprobs;
  bool have_logprob_ids = false;
  if (const nlohmann::json* lps = OptionalField(*meta, "output_token_logprobs")) {
    if (!lps->is_array()) return TypeError("meta_info.output_token_logprobs", "an array", *lps);
    have_logprob_ids = true;
    for (size_t i = 0; i < lps->size(); ++i) {
      const auto& t = (*lps)[i];
      std::string path = fmt::format("meta_info.output_token_logprobs[{}]", i);
      if (!t.is_array() || t.size() < 2) {
        return TypeError(path, "a [logprob, token_id, text] array", t);
      }
      PADDOCK_ASSIGN_OR_RETURN(float lp, AsLogprob(t[0], path + "[0]"));
      PADDOCK_ASSIGN_OR_RETURN(int32_t id, AsTokenId(t[1], path + "[1]"));
      out.logprobs.push_back(lp);
      ids_from_logprobs.push_back(id);
    }
  } else if (request.return_logprobs) {
    return Error(Code::kDataLoss,
                 "response field 'meta_info.output_token_logprobs' is missing although "
                 "return_logprob was requested");
  }

  if (const nlohmann::json* ids = OptionalField(body, "output_ids")) {
    if (!ids->is_array()) return TypeError("output_ids", "an array of token ids", *ids);
    for (size_t i = 0; i < ids->size(); ++i) {
      PADDOCK_ASSIGN_OR_RETURN(int32_t id, AsTokenId((*ids)[i], fmt::format("output_ids[{}]", i)));
      out.output_ids.push_back(id);
    }
    if (have_logprob_ids && out.output_ids != ids_from_logprobs) {
      return Error(Code::kDataLoss,
                   "'output_ids' ({} ids) disagrees with the ids in "
                   "'meta_info.output_token_logprobs' ({} ids)",
                   out.output_ids.size(), ids_from_logprobs.size());
    }
  } else if (have_logprob_ids) {
    out.output_ids = std::move(ids_from_logprobs);
  } else {
    return Error(Code::kDataLoss,
                 "response has neither 'output_ids' nor 'meta_info.output_token_logprobs'; "
                 "the output token ids are unknown");
  }

  // weight_version: SGLang ≥ 0.5 puts the serving weights' version here.
  if (const nlohmann::json* wv = OptionalField(*meta, "weight_version"); wv && !wv->is_null()) {
    PADDOCK_ASSIGN_OR_RETURN(out.weight_version, AsString(*wv, "meta_info.weight_version"));
  }

  // finish_reason: {"type": "stop", "matched": id|string|null} | {"type": "length", …}
  //                | {"type": "abort", "message": …}
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* fr, Field(*meta, "meta_info", "finish_reason"));
  if (!fr->is_object()) return TypeError("meta_info.finish_reason", "an object", *fr);
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* type, Field(*fr, "meta_info.finish_reason", "type"));
  PADDOCK_ASSIGN_OR_RETURN(std::string t, AsString(*type, "meta_info.finish_reason.type"));
  if (t == "length") {
    out.finish_reason = FinishReason::kLength;
  } else if (t == "abort") {
    out.finish_reason = FinishReason::kAbort;
  } else if (t == "stop") {
    const nlohmann::json* matched = OptionalField(*fr, "matched");
    if (matched && matched->is_number_integer()) {
      PADDOCK_ASSIGN_OR_RETURN(int32_t id, AsTokenId(*matched, "meta_info.finish_reason.matched"));
      out.matched_stop_token = id;
      const auto& stops = request.sampling.stop_token_ids;
      out.finish_reason = std::find(stops.begin(), stops.end(), id) != stops.end()
                              ? FinishReason::kStop
                              : FinishReason::kEos;
    } else if (matched && matched->is_string()) {
      out.finish_reason = FinishReason::kStop;
    } else {
      out.finish_reason = FinishReason::kEos;
    }
  } else {
    return Error(Code::kDataLoss, "response field 'meta_info.finish_reason.type' has unknown value '{}'",
                 t);
  }
  return out;
}

}  // namespace paddock::policy
