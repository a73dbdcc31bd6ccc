// Parsing and printing helpers of the `paddock` CLI: sizes ("256M"), K=V
// pairs, ages, tables and the JSON forms of the client's types. No I/O besides
// the returned strings.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "paddock/client.h"

namespace paddock::cli {

// "1048576", "512K", "256M", "1G", "2Gi", "64MiB" (binary units, case-insensitive).
Result<uint64_t> ParseSize(const std::string& text);
// "K=V" items into a map; `what` names the flag for the error message.
Result<std::map<std::string, std::string>> ParseKeyValues(const std::vector<std::string>& items,
                                                         const std::string& what);
// "12s", "5m", "3h", "2d".
std::string FormatAge(int64_t created_unix_ms, int64_t now_unix_ms);
// Left-aligned columns separated by two spaces; the first row is the header.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);
const char* FileTypeName(FileType t);
// "512 B", "1.5 KiB", "3.2 GiB".
std::string FormatBytes(uint64_t bytes);

nlohmann::json ToJson(const client::SandboxInfo& s);
nlohmann::json ToJson(const ExecResult& r);
nlohmann::json ToJson(const FileInfo& f);
nlohmann::json ToJson(const client::DaemonStats& s);
// Serializes without throwing on bytes that are not UTF-8 (command output may
// be anything): such bytes become U+FFFD.
std::string Dump(const nlohmann::json& j);

}  // namespace paddock::cli
