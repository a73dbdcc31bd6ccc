#include "cli_format.h"

#include <algorithm>
#include <cctype>

#include "sandbox/limits_json.h"

namespace paddock::cli {

Result<uint64_t> ParseSize(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i > 19)
    return Error(Code::kInvalidArgument, "size '{}': expected a number of bytes such as 1048576, 512K, 256M or 2G",
                 text);
  uint64_t n = std::stoull(text.substr(0, i));
  std::string suffix = text.substr(i);
  for (auto& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (suffix.size() > 1 && suffix.back() == 'B') suffix.pop_back();  // "MB", "MiB"
  if (suffix.size() == 2 && suffix[1] == 'I') suffix.pop_back();    // "Mi"
  int shift = 0;
  if (suffix == "" || suffix == "B") shift = 0;
  else if (suffix == "K") shift = 10;
  else if (suffix == "M") shift = 20;
  else if (suffix == "G") shift = 30;
  else if (suffix == "T") shift = 40;
  else
    return Error(Code::kInvalidArgument, "size '{}': unknown unit; use K, M, G or T (powers of 1024)", text);
  if (shift && n > (UINT64_MAX >> shift)) return Error(Code::kInvalidArgument, "size '{}' is too large", text);
  return n << shift;
}

Result<std::map<std::string, std::string>> ParseKeyValues(const std::vector<std::string>& items,
                                                         const std::string& what) {
  std::map<std::string, std::string> out;
  for (const auto& item : items) {
    size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      return Error(Code::kInvalidArgument, "{} '{}': expected KEY=VALUE", what, item);
    out[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return out;
}

std::string FormatAge(int64_t created_unix_ms, int64_t now_unix_ms) {
  int64_t s = std::max<int64_t>(0, (now_unix_ms - created_unix_ms) / 1000);
  if (s < 120) return fmt::format("{}s", s);
  if (s < 7200) return fmt::format("{}m", s / 60);
  if (s < 172800) return fmt::format("{}h", s / 3600);
  return fmt::format("{}d", s / 86400);
}

std::string FormatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

std::string FormatBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[u]);
}

const char* FileTypeName(FileType t) {
  switch (t) {
    case FileType::kRegular: return "file";
    case FileType::kDirectory: return "dir";
    case FileType::kSymlink: return "symlink";
    case FileType::kOther: return "other";
    case FileType::kUnknown: break;
  }
  return "unknown";
}

nlohmann::json ToJson(const client::SandboxInfo& s) {
  return {{"id", s.id},
          {"substrate", s.substrate},
          {"image", s.image},
          {"created_unix_ms", s.created_unix_ms},
          {"expires_unix_ms", s.expires_unix_ms},
          {"state", s.state},
          {"labels", s.labels},
          {"limits", s.limits}};
}

nlohmann::json ToJson(const ExecResult& r) {
  return {{"exit_code", r.exit_code},
          {"signal", r.signal},
          {"stdout", r.stdout_data},
          {"stderr", r.stderr_data},
          {"stdout_truncated", r.stdout_truncated},
          {"stderr_truncated", r.stderr_truncated},
          {"timed_out", r.timed_out},
          {"oom_killed", r.oom_killed},
          {"wall_time_us", r.wall_time_us},
          {"cpu_time_us", r.cpu_time_us},
          {"peak_memory_bytes", r.peak_memory_bytes}};
}

nlohmann::json ToJson(const FileInfo& f) {
  return {{"name", f.name},
          {"type", FileTypeName(f.type)},
          {"size", f.size},
          {"mode", fmt::format("{:04o}", f.mode)},
          {"mtime_unix_ms", f.mtime_unix_ms}};
}

nlohmann::json ToJson(const client::DaemonStats& s) {
  nlohmann::json j = {{"live_sandboxes", s.live_sandboxes},
                      {"max_sandboxes", s.max_sandboxes},
                      {"by_substrate", s.by_substrate},
                      {"execs_total", s.execs_total},
                      {"daemon_rss_bytes", s.daemon_rss_bytes},
                      {"queued_episodes", s.queued_episodes}};
  if (s.has_usage)
    j["usage"] = {{"memory_bytes", s.usage.memory_bytes},
                  {"cpu_time_us", s.usage.cpu_time_us},
                  {"pids", s.usage.pids}};
  return j;
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace paddock::cli
