// Shared helpers of the rollout suites: DSML completions for the scripted
// policy and task lines over the busybox test rootfs.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace paddock::testing {

// One V4 completion calling `tool` with string arguments.
inline std::string DsmlCall(const std::string& tool, const std::vector<std::pair<std::string, std::string>>& args) {
  std::string s = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + tool + "\">\n";
  for (const auto& [k, v] : args)
    s += "<｜DSML｜parameter name=\"" + k + "\" string=\"true\">" + v + "</｜DSML｜parameter>\n";
  s += "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";
  return s;
}

// A script of `turns` bash calls, each appending "S<turn>" to /tmp/ran (the
// side effect tests count) after sleeping `sleep_s`, then submit.
inline std::string CountingScript(int turns, const std::string& sleep_s = "0") {
  nlohmann::json a = nlohmann::json::array();
  for (int i = 0; i < turns; ++i)
    a.push_back(DsmlCall("bash", {{"command", "sleep " + sleep_s + "; echo S{turn} >> /tmp/ran; echo ok {turn}"}}));
  a.push_back(DsmlCall("submit", {{"answer", "done"}}));
  return a.dump();
}

// The verifier for CountingScript: reward 1 exactly when /tmp/ran holds
// S0..S<turns-1>, each once, in order.
inline std::string CountingVerifier(int turns) {
  std::string expect;
  for (int i = 0; i < turns; ++i) expect += "S" + std::to_string(i) + "\\n";
  return "test \"$(cat /tmp/ran)\" = \"$(printf '" + expect + "')\"";
}

inline std::string CountingTasks(const std::string& rootfs, int tasks, int turns, const std::string& substrate = "container") {
  std::string out;
  for (int i = 0; i < tasks; ++i) {
    nlohmann::json t = {{"id", "count-" + std::to_string(i)},
                        {"image", rootfs},
                        {"substrate", substrate},
                        {"instruction", "Append a line per turn to /tmp/ran, then submit."},
                        {"tools", {"bash", "submit"}},
                        {"max_turns", turns + 4},
                        {"setup", {"rm -f /tmp/ran"}},
                        {"verifier", CountingVerifier(turns)},
                        {"metadata", {{"n", i}}}};
    out += t.dump() + "\n";
  }
  return out;
}

}  // namespace paddock::testing
