#include "storage/layer.h"

#include <nlohmann/json.hpp>

namespace paddock::storage {

const char* CompressionName(Compression c) {
  switch (c) {
    case Compression::kLz4: return "lz4";
    case Compression::kGzip: return "gzip";
    default: return "zstd";
  }
}

Result<Compression> ParseCompression(std::string_view name) {
  if (name == "zstd") return Compression::kZstd;
  if (name == "lz4") return Compression::kLz4;
  if (name == "gzip") return Compression::kGzip;
  return Error(Code::kInvalidArgument, "unknown layer compression '{}' (zstd, lz4 or gzip)", name);
}

std::string EncodeIndex(const Digest& diff_id, const std::vector<LayerEntry>& entries) {
  nlohmann::json j;
  j["diff_id"] = diff_id.str();
  j["fields"] = {"path", "type", "size", "mode", "uid", "gid", "mtime", "link", "offset"};
  auto& arr = j["entries"] = nlohmann::json::array();
  for (const auto& e : entries)
    arr.push_back({e.path, std::string(1, static_cast<char>(e.type)), e.size, e.mode, e.uid, e.gid, e.mtime,
                   e.link, e.offset});
  return j.dump();
}

Result<std::vector<LayerEntry>> DecodeIndex(std::string_view json) {
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.contains("entries")) return Error(Code::kDataLoss, "layer index is not valid JSON");
  std::vector<LayerEntry> out;
  try {
    for (const auto& a : j["entries"]) {
      LayerEntry e;
      e.path = a[0].get<std::string>();
      e.type = static_cast<EntryType>(a[1].get<std::string>().at(0));
      e.size = a[2].get<uint64_t>();
      e.mode = a[3].get<uint32_t>();
      e.uid = a[4].get<uint32_t>();
      e.gid = a[5].get<uint32_t>();
      e.mtime = a[6].get<int64_t>();
      e.link = a[7].get<std::string>();
      e.offset = a[8].get<uint64_t>();
      out.push_back(std::move(e));
    }
  } catch (const std::exception& ex) {
    return Error(Code::kDataLoss, "layer index is malformed: {}", ex.what());
  }
  return out;
}

}  // namespace paddock::storage
