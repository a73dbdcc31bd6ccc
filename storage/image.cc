#include "storage/image.h"

#include <nlohmann/json.hpp>

namespace paddock::storage {

using nlohmann::json;

namespace {
std::vector<std::string> Strings(const json& j, const char* key) {
  std::vector<std::string> out;
  if (j.contains(key) && j[key].is_array())
    for (const auto& s : j[key])
      if (s.is_string()) out.push_back(s.get<std::string>());
  return out;
}
}  // namespace

Result<ImageConfig> ParseImageConfig(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error(Code::kInvalidArgument, "image config is not a JSON object");
  ImageConfig c;
  if (j.contains("config") && j["config"].is_object()) {
    const json& cfg = j["config"];
    c.env = Strings(cfg, "Env");
    c.entrypoint = Strings(cfg, "Entrypoint");
    c.cmd = Strings(cfg, "Cmd");
    if (cfg.contains("WorkingDir") && cfg["WorkingDir"].is_string()) c.cwd = cfg["WorkingDir"];
    if (cfg.contains("User") && cfg["User"].is_string()) c.user = cfg["User"];
  }
  return c;
}

Result<std::vector<Digest>> ParseDiffIds(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("rootfs") || !j["rootfs"].contains("diff_ids") ||
      !j["rootfs"]["diff_ids"].is_array())
    return Error(Code::kInvalidArgument, "image config has no rootfs.diff_ids");
  std::vector<Digest> out;
  for (const auto& d : j["rootfs"]["diff_ids"]) {
    if (!d.is_string()) return Error(Code::kInvalidArgument, "image config has a non-string diff_id");
    PADDOCK_ASSIGN_OR_RETURN(Digest dg, Digest::Parse(d.get<std::string>()));
    out.push_back(dg);
  }
  return out;
}

std::string MakeOciConfig(const ImageConfig& c, const std::vector<Digest>& diff_ids) {
  json j;
  j["architecture"] = "amd64";
  j["os"] = "linux";
  json cfg = json::object();
  if (!c.env.empty()) cfg["Env"] = c.env;
  if (!c.entrypoint.empty()) cfg["Entrypoint"] = c.entrypoint;
  if (!c.cmd.empty()) cfg["Cmd"] = c.cmd;
  if (!c.cwd.empty()) cfg["WorkingDir"] = c.cwd;
  if (!c.user.empty()) cfg["User"] = c.user;
  j["config"] = cfg;
  json ids = json::array();
  for (const auto& d : diff_ids) ids.push_back(d.str());
  j["rootfs"] = {{"type", "layers"}, {"diff_ids", ids}};
  return j.dump();
}

std::string Manifest::Encode() const {
  json j;
  j["schemaVersion"] = 1;
  j["mediaType"] = "application/vnd.paddock.image.manifest.v1+json";
  j["config"] = config.str();
  json layers = json::array();
  for (const auto& l : this->layers)
    layers.push_back({{"diff_id", l.diff_id.str()},
                      {"blob", l.blob.str()},
                      {"compression", CompressionName(l.compression)},
                      {"index", l.index.str()},
                      {"size", l.size},
                      {"uncompressed_size", l.uncompressed_size}});
  j["layers"] = layers;
  return j.dump();
}

Result<Manifest> Manifest::Decode(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("mediaType", "") != "application/vnd.paddock.image.manifest.v1+json")
    return Error(Code::kDataLoss, "not a paddock image manifest");
  Manifest m;
  try {
    PADDOCK_ASSIGN_OR_RETURN(m.config, Digest::Parse(j.at("config").get<std::string>()));
    for (const auto& l : j.at("layers")) {
      StoredLayer s;
      PADDOCK_ASSIGN_OR_RETURN(s.diff_id, Digest::Parse(l.at("diff_id").get<std::string>()));
      PADDOCK_ASSIGN_OR_RETURN(s.blob, Digest::Parse(l.at("blob").get<std::string>()));
      PADDOCK_ASSIGN_OR_RETURN(s.index, Digest::Parse(l.at("index").get<std::string>()));
      PADDOCK_ASSIGN_OR_RETURN(s.compression, ParseCompression(l.at("compression").get<std::string>()));
      s.size = l.at("size").get<uint64_t>();
      s.uncompressed_size = l.at("uncompressed_size").get<uint64_t>();
      m.layers.push_back(s);
    }
  } catch (const std::exception& e) {
    return Error(Code::kDataLoss, "malformed image manifest: {}", e.what());
  }
  return m;
}

}  // namespace paddock::storage
