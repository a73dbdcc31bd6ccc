#include "storage/registry/blob_sources.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "storage/fs_util.h"

namespace paddock::storage::registry {

using nlohmann::json;

namespace {

constexpr size_t kMaxSources = 8;

std::string Dir(const ImageStore& store) { return store.root() + "/registry/blob-sources"; }

std::vector<std::string> Read(const ImageStore& store, const Digest& blob) {
  auto text = ReadFileLimited(Dir(store) + "/" + blob.hex(), 64 << 10);
  if (!text.ok()) return {};
  json j = json::parse(*text, nullptr, false);
  std::vector<std::string> out;
  if (j.is_array())
    for (const auto& e : j)
      if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

// Replaced atomically (a reader sees the old list or the new one) but not
// fsynced: the record is a hint, and a pull writes one per blob; one lost in a
// crash only means that a later push uploads instead of mounting.
Status WriteHint(const std::string& dir, const std::string& path, const std::string& data) {
  std::string tmp = dir + "/" + UniqueTempName(".tmp-");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("creating " + tmp);
  Status st = WriteAll(fd, data.data(), data.size(), tmp);
  ::close(fd);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = ErrnoError("renaming to " + path);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

}  // namespace

std::vector<std::string> BlobSourcesOn(const ImageStore& store, const Digest& blob, const std::string& registry,
                                       const std::string& except_repository) {
  std::vector<std::string> out;
  const std::string prefix = registry + "/";
  for (const auto& s : Read(store, blob))
    if (s.rfind(prefix, 0) == 0 && s.substr(prefix.size()) != except_repository)
      out.push_back(s.substr(prefix.size()));
  return out;
}

void RecordBlobSource(const ImageStore& store, const Digest& blob, const std::string& registry,
                      const std::string& repository) {
  const std::string entry = registry + "/" + repository;
  std::vector<std::string> sources = Read(store, blob);
  if (!sources.empty() && sources.front() == entry) return;
  std::erase(sources, entry);
  sources.insert(sources.begin(), entry);
  if (sources.size() > kMaxSources) sources.resize(kMaxSources);
  Status st = MakeDirs(Dir(store));
  if (st.ok()) st = WriteHint(Dir(store), Dir(store) + "/" + blob.hex(), json(sources).dump());
  if (!st.ok()) spdlog::debug("recording where blob {} lives: {}", blob.str(), st.message());
}

}  // namespace paddock::storage::registry
