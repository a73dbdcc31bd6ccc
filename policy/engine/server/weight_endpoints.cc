// SGLang's weight-update endpoints on PolicyService:
//   POST /update_weights_from_disk  {"model_path", "load_format"?, "weight_version"?, "abort_all_requests"?}
//     → {"success", "message", "num_paused_requests", …}; 400 when success is false
//   GET  /model_info (/get_model_info)          → {"model_path", "weight_version", …}
//   GET  /weight_version (/get_weight_version)  → {"weight_version"}
// SGLang answers every failed update with 400 and {"success": false,
// "message"}; so does this, whatever went wrong (bad body, bad file), so a
// client reads one shape. The engine keeps its old weights on any failure.
#include <sys/stat.h>

#include <chrono>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "policy/engine/server/policy_service.h"

namespace paddock::policy::engine::server {
namespace {

using json = nlohmann::json;

HttpReply UpdateReply(int status, bool success, const std::string& message, json extra = json::object()) {
  json body = {{"success", success}, {"message", message}, {"num_paused_requests", 0}};
  for (auto& [k, v] : extra.items()) body[k] = v;
  return {status, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

// SGLang's model_path is usually a checkpoint directory: one holding
// model.safetensors stands for that file.
std::string ResolveWeightsPath(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::string inner = path + (path.back() == '/' ? "" : "/") + "model.safetensors";
    if (::stat(inner.c_str(), &st) == 0) return inner;
  }
  return path;
}

}  // namespace

HttpReply PolicyService::UpdateWeightsFromDisk(const HttpPeer& peer, const std::string& body) {
  auto started = std::chrono::steady_clock::now();
  auto failed = [&](int status, const std::string& message) {
    std::lock_guard lock(metrics_mu_);
    ++weight_updates_failed_;
    return UpdateReply(status, false, message);
  };
  if (!peer.loopback && !options_.allow_remote_weight_updates)
    return failed(403, fmt::format("weight updates are accepted from loopback only (this request came from {}); "
                                   "start paddock-policy with --allow-remote-weight-updates to allow others",
                                   peer.address));
  json req = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object()) return failed(400, "body: must be a JSON object");
  auto path_it = req.find("model_path");
  if (path_it == req.end() || !path_it->is_string() || path_it->get<std::string>().empty())
    return failed(400, "model_path: must be the path of a safetensors file (a non-empty string)");
  std::string path = path_it->get<std::string>();
  if (path.front() != '/')
    return failed(400, fmt::format("model_path: '{}' is relative; give an absolute path (the server's working "
                                   "directory is not the caller's)",
                                   path));
  if (auto lf = req.find("load_format"); lf != req.end() && !lf->is_null()) {
    if (!lf->is_string() || (*lf != "auto" && *lf != "safetensors"))
      return failed(400, fmt::format("load_format: {} is not supported; use \"safetensors\", \"auto\" or leave it out",
                                     lf->dump()));
  }
  std::string version;
  if (auto v = req.find("weight_version"); v != req.end() && !v->is_null()) {
    if (!v->is_string() || v->get<std::string>().empty() || v->get<std::string>().size() > 256)
      return failed(400, "weight_version: must be a string of 1 to 256 characters");
    version = v->get<std::string>();
  }
  bool abort = false;
  if (auto a = req.find("abort_all_requests"); a != req.end() && !a->is_null()) {
    if (!a->is_boolean()) return failed(400, "abort_all_requests: must be true or false");
    abort = a->get<bool>();
  }
  // Other SGLang fields (flush_cache, is_async, keep_pause, token_step, …)
  // concern GPU scheduling and are accepted and ignored.

  WeightUpdate update{ResolveWeightsPath(path), version, abort};
  auto result = engine_->UpdateWeightsFromDisk(update);
  if (!result.ok())
    return failed(400, fmt::format("Failed to update weights from {}: {}. The old weights (version {}) stay in use.",
                                   update.path, result.status().message(), engine_->weight_version()));
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  {
    std::lock_guard lock(metrics_mu_);
    ++weight_updates_ok_;
    last_weight_update_seconds_ = seconds;
  }
  const WeightUpdateResult& r = result.value();
  return UpdateReply(200, true,
                     fmt::format("Succeeded to update model weights from {} in {:.0f} ms. Weight version updated to "
                                 "{}.",
                                 update.path, seconds * 1000, r.version),
                     {{"weight_version", r.version},
                      {"load_seconds", r.load_ms / 1000},
                      {"requests_on_old_weights", r.still_running},
                      {"aborted_requests", r.aborted}});
}

HttpReply PolicyService::ModelInfo() {
  json body = {{"model_path", engine_->weights_source()},
               {"tokenizer_path", nullptr},
               {"is_generation", true},
               {"preferred_sampling_params", nullptr},
               {"weight_version", engine_->weight_version()},
               {"has_image_understanding", false},
               {"has_audio_understanding", false},
               {"model_name", options_.model_name}};
  return {200, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

HttpReply PolicyService::WeightVersion() {
  json body = {{"weight_version", engine_->weight_version()}};
  return {200, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

}  // namespace paddock::policy::engine::server
