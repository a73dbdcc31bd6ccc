// CallKey: the key of one side-effecting call in the intents/results column
// families, and its "EPISODE:STEP:CALL" text form.
#include <charconv>

#include "replay/trajectory_log.h"

namespace paddock::replay {
namespace {

void AppendBigEndian(std::string& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t ReadBigEndian(std::string_view in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

Status ValidateEpisodeId(std::string_view episode) {
  if (episode.empty()) return Error(Code::kInvalidArgument, "episode id is empty");
  if (episode.find('\0') != std::string_view::npos)
    return Error(Code::kInvalidArgument, "episode id contains a NUL byte");
  return Status::Ok();
}

}  // namespace

std::string CallKey::Encode() const {
  std::string out;
  out.reserve(episode.size() + 13);
  out.append(episode);
  out.push_back('\0');
  AppendBigEndian(out, step, 8);
  AppendBigEndian(out, call, 4);
  return out;
}

std::string EncodeStepKey(const std::string& episode, uint64_t step) {
  std::string out;
  out.reserve(episode.size() + 9);
  out.append(episode);
  out.push_back('\0');
  AppendBigEndian(out, step, 8);
  return out;
}

std::string CallKey::ToString() const { return fmt::format("{}:{}:{}", episode, step, call); }

Status CallKey::Validate() const { return ValidateEpisodeId(episode); }

Result<CallKey> CallKey::Parse(const std::string& text) {
  const char* kForm = "expected EPISODE:STEP:CALL, e.g. 'ep-17:3:0'";
  size_t call_colon = text.rfind(':');
  if (call_colon == std::string::npos || call_colon == 0)
    return Error(Code::kInvalidArgument, "call key '{}' has no ':': {}", text, kForm);
  size_t step_colon = text.rfind(':', call_colon - 1);
  if (step_colon == std::string::npos)
    return Error(Code::kInvalidArgument, "call key '{}' has one ':', needs two: {}", text, kForm);
  CallKey key;
  key.episode = text.substr(0, step_colon);
  std::string_view step = std::string_view(text).substr(step_colon + 1, call_colon - step_colon - 1);
  std::string_view call = std::string_view(text).substr(call_colon + 1);
  if (key.episode.empty())
    return Error(Code::kInvalidArgument, "call key '{}' has an empty episode id: {}", text, kForm);
  if (Status st = key.Validate(); !st.ok()) return st.Prefix(fmt::format("call key '{}'", text));
  auto parse = [&](std::string_view part, const char* what, uint64_t max, uint64_t& out) -> Status {
    if (part.empty())
      return Error(Code::kInvalidArgument, "call key '{}' has an empty {}: {}", text, what, kForm);
    auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), out);
    if (ec == std::errc::result_out_of_range || (ec == std::errc() && out > max))
      return Error(Code::kInvalidArgument, "call key '{}': {} '{}' is out of range (at most {})",
                   text, what, part, max);
    if (ec != std::errc() || end != part.data() + part.size())
      return Error(Code::kInvalidArgument, "call key '{}': {} '{}' is not a decimal number: {}",
                   text, what, part, kForm);
    return Status::Ok();
  };
  uint64_t call_value = 0;
  PADDOCK_RETURN_IF_ERROR(parse(step, "step", UINT64_MAX, key.step));
  PADDOCK_RETURN_IF_ERROR(parse(call, "call index", UINT32_MAX, call_value));
  key.call = static_cast<uint32_t>(call_value);
  return key;
}

Result<CallKey> CallKey::Decode(std::string_view bytes) {
  if (bytes.size() < 14 || bytes[bytes.size() - 13] != '\0')
    return Error(Code::kDataLoss, "{}-byte log key is not an encoded call key", bytes.size());
  CallKey key;
  key.episode = std::string(bytes.substr(0, bytes.size() - 13));
  key.step = ReadBigEndian(bytes.substr(bytes.size() - 12), 8);
  key.call = static_cast<uint32_t>(ReadBigEndian(bytes.substr(bytes.size() - 4), 4));
  if (Status st = key.Validate(); !st.ok()) return Status(Code::kDataLoss, st.message());
  return key;
}

}  // namespace paddock::replay
