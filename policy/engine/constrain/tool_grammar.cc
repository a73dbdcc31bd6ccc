#include "policy/engine/constrain/tool_grammar.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>

#include <fmt/format.h>

namespace paddock::policy::engine::constrain {
namespace {

constexpr std::string_view kThinkEnd = "</think>";
constexpr std::string_view kThinkStart = "<think>";
constexpr std::string_view kToolCallsStart = "\n\n<｜DSML｜tool_calls";
constexpr std::string_view kToolCallsEnd = "</｜DSML｜tool_calls>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kDsml = "｜DSML｜";
constexpr std::string_view kParamClose = "</｜DSML｜parameter";
constexpr std::string_view kParamCloseBare = "/｜DSML｜parameter";
constexpr std::string_view kParamCloseFull = "</｜DSML｜parameter>\n";
constexpr std::string_view kGtNl = ">\n";

constexpr int kDead = -1;
constexpr size_t kMaxCacheBytes = size_t{64} << 20;  // per grammar
constexpr int kFire = -2;

// Pending-marker automaton of one free-text region, replaying the strict
// decoder's scan: at each position the earliest marker wins, a marker still
// incomplete there is waited for. State = the pending text (a proper prefix of
// some marker). One marker is the region's terminator; the others are forbidden.
class MarkerDfa {
 public:
  MarkerDfa() = default;
  MarkerDfa(std::vector<std::string_view> markers, int terminator) : markers_(std::move(markers)) {
    terminator_ = terminator;
    states_.push_back("");
    index_[""] = 0;
    for (auto m : markers_)
      for (size_t k = 1; k < m.size(); ++k) Intern(std::string(m.substr(0, k)));
    trans_.resize(states_.size() * 256);
    for (size_t s = 0; s < states_.size(); ++s)
      for (int b = 0; b < 256; ++b) trans_[s * 256 + b] = Compute(states_[s] + static_cast<char>(b));
  }
  int Next(int state, uint8_t b) const { return trans_[static_cast<size_t>(state) * 256 + b]; }
  const std::string& text(int state) const { return states_[static_cast<size_t>(state)]; }
  // Whether the pending text of `state` is a prefix of the terminator.
  bool TowardTerminator(int state) const {
    if (terminator_ < 0) return false;
    const std::string& t = states_[static_cast<size_t>(state)];
    return markers_[static_cast<size_t>(terminator_)].substr(0, t.size()) == t;
  }
  bool has_terminator() const { return terminator_ >= 0; }
  // Whether the pending text already holds a complete forbidden marker (inside
  // a longer marker still under way): cutting it off here, by EOS, would leave
  // that marker in the text.
  bool Poisoned(int state) const {
    const std::string& t = states_[static_cast<size_t>(state)];
    for (size_t i = 0; i < markers_.size(); ++i)
      if (static_cast<int>(i) != terminator_ && t.find(markers_[i]) != std::string::npos) return true;
    return false;
  }

 private:
  int Intern(const std::string& s) {
    auto it = index_.find(s);
    if (it != index_.end()) return it->second;
    int id = static_cast<int>(states_.size());
    states_.push_back(s);
    index_[s] = id;
    return id;
  }
  int Compute(const std::string& t) const {
    for (size_t q = 0; q < t.size(); ++q) {
      std::string_view rest(t.data() + q, t.size() - q);
      bool partial = false;
      for (size_t i = 0; i < markers_.size(); ++i) {
        std::string_view m = markers_[i];
        if (rest.size() >= m.size()) {
          if (rest.substr(0, m.size()) == m) {
            if (partial) return index_.at(std::string(rest));
            // A complete marker ends here (anything earlier would have fired).
            return static_cast<int>(i) == terminator_ ? kFire : kDead;
          }
        } else if (m.substr(0, rest.size()) == rest) {
          partial = true;
        }
      }
      if (partial) return index_.at(std::string(rest));
    }
    return 0;
  }

  std::vector<std::string_view> markers_;
  int terminator_ = -1;
  std::vector<std::string> states_;
  std::map<std::string, int> index_;
  std::vector<int> trans_;
};

}  // namespace

// ---------------------------------------------------------------------------
// The automaton.

struct ToolGrammar::Impl {
  enum Pc : uint8_t {
    kReasoning,
    kContent,
    kValueStr,       // free string parameter value
    kLitTcOpen,      // ">\n" after "\n\n<｜DSML｜tool_calls"
    kLitAfterParam,  // ">\n" after "</｜DSML｜parameter"
    kLitParamClose,  // "</｜DSML｜parameter>\n" after a JSON / enum value
    kChoiceInvoke,   // an invoke header or the block's end
    kChoiceParam,    // a parameter header or the invoke's end
    kJson,           // a schema-shaped value
    kEosOnly,        // after </｜DSML｜tool_calls>
    kDone,
  };
  enum class Kind : uint8_t { kString, kInteger, kNumber, kLiteral, kArray, kObject };
  struct JsonNode {
    Kind kind = Kind::kString;
    uint32_t max_chars = 0;               // kString
    bool exact = false;                   // kString: maxLength from the schema, checked per byte
    std::vector<std::string> options;     // kLiteral, sorted
    int item = -1;                        // kArray
    uint32_t max_items = 0;               // kArray
    std::vector<std::pair<std::string, int>> props;  // kObject: key literal ("\"k\":" with ',' after the first), node
    size_t min_bytes = 0;                 // shortest rendering (closing budget)
  };
  struct Param {
    std::string name;
    bool is_string = true;
    bool required = false;
    int node = -1;  // -1: free string value; else the JSON (or raw-literal) node
    uint32_t max_chars = 0;  // free string value: cap in code points
    bool exact = false;      // the cap is the schema's maxLength (per byte), not the default (per token)
    size_t min_bytes = 0;
  };
  struct Tool {
    std::string name;
    std::vector<Param> params;
    std::vector<std::string> options;  // sorted parameter headers + the invoke's end
    std::vector<int> option_param;     // param index per option, -1: "</｜DSML｜invoke>\n"
    uint64_t required_mask = 0;
    size_t close_bytes = 0;            // shortest completion of this invoke from its header
  };

  static constexpr int kMaxDepth = 8;
  struct Frame {
    uint16_t node = 0;
    uint16_t stage = 0;
    uint16_t pos = 0;
    uint16_t lo = 0, hi = 0;
    uint32_t n = 0;
  };
  struct State {
    Pc pc = kContent;
    uint8_t closing = 0;
    uint8_t utf8_need = 0;
    uint8_t utf8_lo = 0x80, utf8_hi = 0xBF;
    uint8_t invokes = 0;
    uint8_t depth = 0;
    uint8_t full = 0;  // the free region reached its cap at a token boundary: only its closer follows
    int16_t tool = -1;
    int16_t param = -1;
    int32_t dfa = 0;
    uint32_t count = 0;
    uint16_t pos = 0, lo = 0, hi = 0;
    uint64_t used = 0;
    Frame frames[kMaxDepth];
  };

  GrammarOptions opt;
  MarkerDfa reasoning_dfa, content_dfa, value_dfa;
  std::vector<JsonNode> nodes;
  std::vector<Tool> tools;
  std::vector<std::string> invoke_options;  // sorted invoke headers + the block's end
  std::vector<int> invoke_tool;             // tool per option, -1: "</｜DSML｜tool_calls>"
  std::vector<uint8_t> tool_allowed;
  size_t close_reserve = 0;  // bytes that always suffice to finish from anywhere
  uint32_t clamp = 0;        // counters farther than this from their cap are equivalent

  // --- building ---------------------------------------------------------

  Result<int> Compile(const nlohmann::json& schema, int depth, const std::string& where) {
    JsonNode node;
    if (!schema.is_object()) {
      node.kind = Kind::kString;
      node.max_chars = opt.max_string_chars;
      node.min_bytes = 2;
      nodes.push_back(node);
      return static_cast<int>(nodes.size() - 1);
    }
    auto literal_options = [&](const nlohmann::json& values) {
      for (const auto& v : values) node.options.push_back(v.dump());
      std::sort(node.options.begin(), node.options.end());
      node.options.erase(std::unique(node.options.begin(), node.options.end()), node.options.end());
    };
    if (auto it = schema.find("const"); it != schema.end()) {
      node.kind = Kind::kLiteral;
      literal_options(nlohmann::json::array({*it}));
    } else if (auto e = schema.find("enum"); e != schema.end() && e->is_array() && !e->empty()) {
      node.kind = Kind::kLiteral;
      literal_options(*e);
    } else {
      std::string type;
      const nlohmann::json* s = &schema;
      for (const char* alt : {"anyOf", "oneOf"}) {
        auto a = schema.find(alt);
        if (!schema.contains("type") && a != schema.end() && a->is_array() && !a->empty() && (*a)[0].is_object())
          s = &(*a)[0];  // the first alternative
      }
      if (auto t = s->find("type"); t != s->end()) {
        if (t->is_string()) type = t->get<std::string>();
        if (t->is_array() && !t->empty() && (*t)[0].is_string()) type = (*t)[0].get<std::string>();
      }
      if (type == "integer" || type == "number") {
        node.kind = type == "integer" ? Kind::kInteger : Kind::kNumber;
        node.min_bytes = 1;
      } else if (type == "boolean") {
        node.kind = Kind::kLiteral;
        node.options = {"false", "true"};
      } else if (type == "null") {
        node.kind = Kind::kLiteral;
        node.options = {"null"};
      } else if (type == "array" && depth < kMaxDepth - 1) {
        node.kind = Kind::kArray;
        node.max_items = opt.max_array_items;
        if (auto m = s->find("maxItems"); m != s->end() && m->is_number_unsigned())
          node.max_items = std::min<uint32_t>(node.max_items, m->get<uint32_t>());
        nlohmann::json items = s->contains("items") ? (*s)["items"] : nlohmann::json::object();
        auto child = Compile(items, depth + 1, where + "[]");
        if (!child.ok()) return child.status();
        node.item = child.value();
        node.min_bytes = 2;
      } else if (type == "object" && depth < kMaxDepth - 1) {
        node.kind = Kind::kObject;
        node.min_bytes = 2;
        // Emits the required properties, in the order the schema lists them.
        std::vector<std::string> required;
        if (auto r = s->find("required"); r != s->end() && r->is_array())
          for (const auto& k : *r)
            if (k.is_string()) required.push_back(k.get<std::string>());
        const nlohmann::json* props = nullptr;
        if (auto p = s->find("properties"); p != s->end() && p->is_object()) props = &*p;
        for (const std::string& key : required) {
          nlohmann::json sub = props && props->contains(key) ? (*props)[key] : nlohmann::json::object();
          auto child = Compile(sub, depth + 1, where + "." + key);
          if (!child.ok()) return child.status();
          std::string lit = (node.props.empty() ? "" : ",") + nlohmann::json(key).dump() + ":";
          node.min_bytes += lit.size() + nodes[static_cast<size_t>(child.value())].min_bytes;
          node.props.push_back({std::move(lit), child.value()});
        }
      } else {
        node.kind = Kind::kString;
        node.max_chars = opt.max_string_chars;
        if (auto m = s->find("maxLength"); m != s->end() && m->is_number_unsigned()) {
          node.max_chars = std::min<uint32_t>(node.max_chars, m->get<uint32_t>());
          node.exact = true;
        }
        node.min_bytes = 2;
      }
    }
    if (node.kind == Kind::kLiteral) {
      if (node.options.empty()) return Error(Code::kInvalidArgument, "{}: enum has no values", where);
      node.min_bytes = node.options[0].size();
      for (const auto& o : node.options) node.min_bytes = std::min(node.min_bytes, o.size());
      if (node.options.size() > 65535) return Error(Code::kInvalidArgument, "{}: enum too large", where);
    }
    nodes.push_back(std::move(node));
    return static_cast<int>(nodes.size() - 1);
  }

  Status Build(const nlohmann::json& tool_list, const TokenBytes& vocab) {
    std::vector<std::string_view> reasoning_markers = {kThinkEnd, kToolCallsStart, kBos, kEos, kThinkStart, kDsml};
    reasoning_dfa = MarkerDfa(reasoning_markers, 0);
    if (tool_list.is_array() && !tool_list.empty()) {
      content_dfa = MarkerDfa({kEos, kToolCallsStart, kBos, kThinkStart, kThinkEnd, kDsml}, 1);
    } else {
      content_dfa = MarkerDfa({kEos, kToolCallsStart, kBos, kThinkStart, kThinkEnd, kDsml}, -1);
    }
    value_dfa = MarkerDfa({kParamClose, kParamCloseBare}, 0);
    clamp = static_cast<uint32_t>(vocab.max_token_bytes()) + 2;

    if (!tool_list.is_null() && !tool_list.is_array())
      return Error(Code::kInvalidArgument, "tools: must be an array");
    size_t max_invoke_bytes = 0;
    for (size_t i = 0; tool_list.is_array() && i < tool_list.size(); ++i) {
      std::string at = fmt::format("tools[{}]", i);
      const nlohmann::json* fn = &tool_list[i];
      if (fn->is_object() && fn->contains("function")) fn = &(*fn)["function"], at += ".function";
      if (!fn->is_object()) return Error(Code::kInvalidArgument, "{}: must be an object", at);
      auto name = fn->find("name");
      if (name == fn->end() || !name->is_string() || name->get<std::string>().empty())
        return Error(Code::kInvalidArgument, "{}.name: missing, empty or not a string", at);
      Tool tool;
      tool.name = name->get<std::string>();
      auto bad_name = [](const std::string& n) {
        for (unsigned char c : n)
          if (c == '"' || c < 0x20) return true;
        return n.find("｜DSML｜") != std::string::npos;
      };
      if (bad_name(tool.name))
        return Error(Code::kInvalidArgument, "{}.name: {} contains '\"', a control byte or ｜DSML｜", at,
                     nlohmann::json(tool.name).dump());
      nlohmann::json params = fn->contains("parameters") ? (*fn)["parameters"] : nlohmann::json::object();
      if (!params.is_object()) return Error(Code::kInvalidArgument, "{}.parameters: must be an object", at);
      std::vector<std::string> required;
      if (auto r = params.find("required"); r != params.end() && r->is_array())
        for (const auto& k : *r)
          if (k.is_string()) required.push_back(k.get<std::string>());
      nlohmann::json props = params.contains("properties") ? params["properties"] : nlohmann::json::object();
      if (!props.is_object())
        return Error(Code::kInvalidArgument, "{}.parameters.properties: must be an object", at);
      // Required parameters that the schema does not describe are still emitted (as strings).
      for (const auto& r : required)
        if (!props.contains(r)) props[r] = nlohmann::json::object();
      if (props.size() > 64)
        return Error(Code::kInvalidArgument, "{}.parameters: more than 64 properties", at);
      for (auto it = props.begin(); it != props.end(); ++it) {
        Param p;
        p.name = it.key();
        if (bad_name(p.name) || p.name.find("\" string=\"") != std::string::npos)
          return Error(Code::kInvalidArgument, "{}.parameters.properties: name {} contains '\"' or a control byte",
                       at, nlohmann::json(p.name).dump());
        p.required = std::find(required.begin(), required.end(), p.name) != required.end();
        const nlohmann::json& ps = it.value();
        std::string type;
        if (ps.is_object() && ps.contains("type")) {
          const auto& t = ps["type"];
          if (t.is_string()) type = t.get<std::string>();
          if (t.is_array() && !t.empty() && t[0].is_string()) type = t[0].get<std::string>();
        }
        bool string_enum = false;
        if (ps.is_object()) {
          auto e = ps.find("enum");
          if (e != ps.end() && (!e->is_array() || e->empty()))
            return Error(Code::kInvalidArgument, "{}.parameters.properties.{}.enum: must be a non-empty array", at,
                         p.name);
          if (e != ps.end() && e->is_array() && !e->empty()) {
            string_enum = std::all_of(e->begin(), e->end(), [](const nlohmann::json& v) { return v.is_string(); });
          }
        }
        std::string where = fmt::format("{}.parameters.properties.{}", at, p.name);
        if (string_enum) {
          // string="true" with a raw-text literal choice.
          JsonNode node;
          node.kind = Kind::kLiteral;
          for (const auto& v : ps["enum"]) node.options.push_back(v.get<std::string>());
          std::sort(node.options.begin(), node.options.end());
          node.options.erase(std::unique(node.options.begin(), node.options.end()), node.options.end());
          for (const auto& o : node.options)
            if (o.empty() || o.find(kParamCloseBare) != std::string::npos || o.find('<') != std::string::npos)
              return Error(Code::kInvalidArgument, "{}: enum value {} is empty or contains '<'", where,
                           nlohmann::json(o).dump());
          node.min_bytes = node.options[0].size();
          for (const auto& o : node.options) node.min_bytes = std::min(node.min_bytes, o.size());
          nodes.push_back(std::move(node));
          p.node = static_cast<int>(nodes.size() - 1);
          p.is_string = true;
          p.min_bytes = nodes.back().min_bytes + kParamCloseFull.size();
        } else if (type == "string" || type.empty()) {
          bool has_shape = ps.is_object() && (ps.contains("enum") || ps.contains("const") ||
                                              ps.contains("anyOf") || ps.contains("oneOf"));
          if (has_shape && type.empty()) {
            auto node = Compile(ps, 1, where);
            if (!node.ok()) return node.status();
            p.node = node.value();
            p.is_string = false;
            p.min_bytes = nodes[static_cast<size_t>(p.node)].min_bytes + kParamCloseFull.size();
          } else {
            p.is_string = true;  // free text
            p.min_bytes = kParamCloseFull.size();
            p.max_chars = opt.max_string_chars;
            if (ps.is_object())
              if (auto m = ps.find("maxLength"); m != ps.end() && m->is_number_unsigned()) {
                p.max_chars = std::min<uint32_t>(p.max_chars, m->get<uint32_t>());
                p.exact = true;
              }
          }
        } else {
          auto node = Compile(ps, 1, where);
          if (!node.ok()) return node.status();
          p.node = node.value();
          p.is_string = false;
          p.min_bytes = nodes[static_cast<size_t>(p.node)].min_bytes + kParamCloseFull.size();
        }
        tool.params.push_back(std::move(p));
      }
      // Parameter headers, sorted for the prefix walk.
      std::vector<std::pair<std::string, int>> opts;
      for (size_t k = 0; k < tool.params.size(); ++k) {
        const Param& p = tool.params[k];
        opts.push_back({fmt::format("<｜DSML｜parameter name=\"{}\" string=\"{}\">", p.name,
                                    p.is_string ? "true" : "false"),
                        static_cast<int>(k)});
        if (p.required) {
          tool.required_mask |= uint64_t{1} << k;
          tool.close_bytes += opts.back().first.size() + p.min_bytes;
        }
      }
      opts.push_back({"</｜DSML｜invoke>\n", -1});
      tool.close_bytes += opts.back().first.size();
      std::sort(opts.begin(), opts.end());
      for (auto& [s, k] : opts) {
        tool.options.push_back(s);
        tool.option_param.push_back(k);
      }
      size_t invoke_bytes = fmt::format("<｜DSML｜invoke name=\"{}\">\n", tool.name).size() + tool.close_bytes;
      for (const auto& t : tools)
        if (t.name == tool.name) return Error(Code::kInvalidArgument, "{}.name: duplicate tool {}", at, tool.name);
      bool allowed = opt.only_tools.empty() ||
                     std::find(opt.only_tools.begin(), opt.only_tools.end(), tool.name) != opt.only_tools.end();
      if (allowed) max_invoke_bytes = std::max(max_invoke_bytes, invoke_bytes);
      tools.push_back(std::move(tool));
      tool_allowed.push_back(allowed);
    }
    for (const auto& name : opt.only_tools) {
      bool found = false;
      for (const auto& t : tools) found = found || t.name == name;
      if (!found) return Error(Code::kInvalidArgument, "tool_choice: no tool named {}", nlohmann::json(name).dump());
    }
    if (opt.require_tool_call && tools.empty())
      return Error(Code::kInvalidArgument, "tool_choice: a tool call is required but no tools are given");
    std::vector<std::pair<std::string, int>> opts;
    for (size_t k = 0; k < tools.size(); ++k)
      opts.push_back({fmt::format("<｜DSML｜invoke name=\"{}\">\n", tools[k].name), static_cast<int>(k)});
    opts.push_back({std::string(kToolCallsEnd), -1});
    std::sort(opts.begin(), opts.end());
    for (auto& [s, k] : opts) {
      invoke_options.push_back(s);
      invoke_tool.push_back(k);
    }
    if (opt.max_tool_calls < 1) opt.max_tool_calls = 1;
    if (opt.max_tool_calls > 255) opt.max_tool_calls = 255;
    // From anywhere: finish the open free text (a marker, or 3 bytes of a UTF-8
    // character), the open JSON value (bounded by the deepest shape), the open
    // invoke, the block, EOS.
    size_t max_node = 0;
    for (const auto& n : nodes) max_node = std::max(max_node, n.min_bytes + 8);
    close_reserve = 4 + kThinkEnd.size() + kToolCallsStart.size() + 2 + max_invoke_bytes +
                    max_node * kMaxDepth + kParamCloseFull.size() + kToolCallsEnd.size() + 1;
    return Status::Ok();
  }

  State Initial() const {
    State s;
    s.pc = opt.thinking ? kReasoning : kContent;
    return s;
  }

  // --- stepping -----------------------------------------------------------

  static bool IsPrefixRangeNarrow(const std::vector<std::string>& options, uint16_t& lo, uint16_t& hi,
                                  uint16_t pos, uint8_t b) {
    uint16_t nlo = hi, nhi = lo;
    for (uint16_t k = lo; k < hi; ++k) {
      const std::string& o = options[k];
      if (o.size() > pos && static_cast<uint8_t>(o[pos]) == b) {
        nlo = std::min(nlo, k);
        nhi = std::max<uint16_t>(nhi, k + 1);
      }
    }
    if (nlo >= nhi) return false;
    lo = nlo, hi = nhi;
    return true;
  }

  bool InvokeOptionAllowed(const State& s, size_t k) const {
    int t = invoke_tool[k];
    if (t < 0) return s.invokes > 0;  // the block's end
    if (s.invokes >= opt.max_tool_calls) return false;
    if (s.closing && s.pos == 0 && s.invokes > 0) return false;  // a choice under way stays open
    return tool_allowed[static_cast<size_t>(t)] != 0;
  }
  bool ParamOptionAllowed(const State& s, size_t k) const {
    const Tool& tool = tools[static_cast<size_t>(s.tool)];
    int p = tool.option_param[k];
    if (p < 0) return (s.used & tool.required_mask) == tool.required_mask;
    if (s.used & (uint64_t{1} << p)) return false;
    if (s.closing && s.pos == 0 && !tool.params[static_cast<size_t>(p)].required) return false;
    return true;
  }

  // A choice step: narrows [lo, hi) to the allowed options continuing with b.
  template <typename Allowed>
  bool ChoiceStep(State& s, const std::vector<std::string>& options, uint8_t b, Allowed allowed, int* chosen) const {
    uint16_t nlo = s.hi, nhi = s.lo;
    for (uint16_t k = s.lo; k < s.hi; ++k) {
      const std::string& o = options[k];
      if (o.size() > s.pos && static_cast<uint8_t>(o[s.pos]) == b && allowed(k)) {
        nlo = std::min(nlo, k);
        nhi = static_cast<uint16_t>(k + 1);
      }
    }
    if (nlo >= nhi) return false;
    s.lo = nlo, s.hi = nhi;
    ++s.pos;
    *chosen = -1;
    for (uint16_t k = s.lo; k < s.hi; ++k)
      if (options[k].size() == s.pos && allowed(k)) *chosen = k;  // options are prefix-free
    return true;
  }

  void EnterChoice(State& s, Pc pc, size_t n) const {
    s.pc = pc;
    s.pos = 0;
    s.lo = 0;
    s.hi = static_cast<uint16_t>(n);
  }

  void StartParamValue(State& s, int param) const {
    const Param& p = tools[static_cast<size_t>(s.tool)].params[static_cast<size_t>(param)];
    s.param = static_cast<int16_t>(param);
    s.used |= uint64_t{1} << param;
    if (p.node < 0) {
      s.pc = kValueStr;
      s.dfa = 0;
      s.count = 0;
      s.full = 0;
    } else {
      s.pc = kJson;
      s.depth = 1;
      s.frames[0] = Frame{};
      s.frames[0].node = static_cast<uint16_t>(p.node);
      const JsonNode& n = nodes[static_cast<size_t>(p.node)];
      if (n.kind == Kind::kLiteral) s.frames[0].hi = static_cast<uint16_t>(n.options.size());
    }
  }

  void PushFrame(State& s, int node) const {
    Frame f;
    f.node = static_cast<uint16_t>(node);
    const JsonNode& n = nodes[static_cast<size_t>(node)];
    if (n.kind == Kind::kLiteral) f.hi = static_cast<uint16_t>(n.options.size());
    s.frames[s.depth++] = f;
  }

  // The top frame finished; tells its parent (or ends the value).
  void PopFrame(State& s) const {
    --s.depth;
    if (s.depth == 0) {
      s.pc = kLitParamClose;
      s.pos = 0;
      return;
    }
    Frame& parent = s.frames[s.depth - 1];
    const JsonNode& pn = nodes[parent.node];
    if (pn.kind == Kind::kArray) {
      parent.stage = 2;
      ++parent.n;
    } else if (pn.kind == Kind::kObject) {
      ++parent.n;
      parent.pos = 0;
      parent.stage = parent.n < pn.props.size() ? 1 : 3;
    }
  }

  bool JsonStep(State& s, uint8_t b, bool cont) const {
    for (int guard = 0; guard < 2 * kMaxDepth + 2; ++guard) {
      if (s.pc != kJson) return LitStep(s, b);
      Frame& f = s.frames[s.depth - 1];
      const JsonNode& n = nodes[f.node];
      const bool closing = s.closing;
      auto digit = [&] { return b >= '0' && b <= '9'; };
      switch (n.kind) {
        case Kind::kString:
          if (f.stage == 0) {
            if (b != '"') return false;
            f.stage = 1;
            return true;
          }
          if (b == '"' && !cont) {
            PopFrame(s);
            return true;
          }
          if (b == '\\' || b < 0x20 || b == 0xEF) return false;
          if (!cont) {
            if (closing || f.stage == 2 || (n.exact && f.n >= n.max_chars)) return false;
            ++f.n;
          }
          return true;
        case Kind::kInteger:
        case Kind::kNumber: {
          const bool num = n.kind == Kind::kNumber;
          switch (f.stage) {
            case 0:
              if (b == '-') return f.stage = 1, true;
              [[fallthrough]];
            case 1:
              if (b == '0') return f.stage = 3, true;
              if (b >= '1' && b <= '9') return f.stage = 2, f.n = 1, true;
              return false;
            case 2:
              if (digit() && f.n < 12 && !closing) return ++f.n, true;
              if (b == '.' && num && !closing) return f.stage = 4, true;
              PopFrame(s);
              continue;
            case 3:
              if (b == '.' && num && !closing) return f.stage = 4, true;
              PopFrame(s);
              continue;
            case 4:
              if (digit()) return f.stage = 5, f.n = 1, true;
              return false;
            default:
              if (digit() && f.n < 6 && !closing) return ++f.n, true;
              PopFrame(s);
              continue;
          }
        }
        case Kind::kLiteral: {
          bool complete = false;
          for (uint16_t k = f.lo; k < f.hi; ++k) complete = complete || n.options[k].size() == f.pos;
          uint16_t lo = f.lo, hi = f.hi;
          if (IsPrefixRangeNarrow(n.options, lo, hi, f.pos, b)) {
            f.lo = lo, f.hi = hi;
            ++f.pos;
            return true;
          }
          if (!complete) return false;
          PopFrame(s);
          continue;
        }
        case Kind::kArray:
          if (f.stage == 0) {
            if (b != '[') return false;
            f.stage = 1;
            return true;
          }
          if (f.stage == 1) {
            if (b == ']') {
              PopFrame(s);
              return true;
            }
            if (closing || f.n >= n.max_items) return false;
            f.stage = 2;  // provisional: PopFrame of the item sets it again
            PushFrame(s, n.item);
            continue;
          }
          if (f.stage == 2) {
            if (b == ']') {
              PopFrame(s);
              return true;
            }
            if (b == ',' && !closing && f.n < n.max_items) return f.stage = 3, true;
            return false;
          }
          PushFrame(s, n.item);  // stage 3: after ','
          continue;
        case Kind::kObject:
          if (f.stage == 0) {
            if (b != '{') return false;
            f.stage = n.props.empty() ? 3 : 1;
            return true;
          }
          if (f.stage == 1) {
            const std::string& key = n.props[f.n].first;
            if (b != static_cast<uint8_t>(key[f.pos])) return false;
            if (++f.pos == key.size()) f.stage = 2;
            return true;
          }
          if (f.stage == 2) {
            f.stage = 4;  // value in progress
            PushFrame(s, n.props[f.n].second);
            continue;
          }
          if (f.stage == 3) {
            if (b != '}') return false;
            PopFrame(s);
            return true;
          }
          return false;
      }
    }
    return false;
  }

  bool LitStep(State& s, uint8_t b) const {
    std::string_view lit;
    switch (s.pc) {
      case kLitTcOpen:
      case kLitAfterParam: lit = kGtNl; break;
      case kLitParamClose: lit = kParamCloseFull; break;
      default: return false;
    }
    if (static_cast<uint8_t>(lit[s.pos]) != b) return false;
    if (++s.pos < lit.size()) return true;
    if (s.pc == kLitTcOpen) {
      EnterChoice(s, kChoiceInvoke, invoke_options.size());
    } else {
      EnterChoice(s, kChoiceParam, tools[static_cast<size_t>(s.tool)].options.size());
    }
    return true;
  }

  bool FreeStep(State& s, uint8_t b, bool cont) const {
    const MarkerDfa* dfa;
    uint32_t cap = 0;
    bool exact = false;
    switch (s.pc) {
      case kReasoning: dfa = &reasoning_dfa; break;
      case kContent: dfa = &content_dfa; break;
      default: {
        dfa = &value_dfa;
        const Param& p = tools[static_cast<size_t>(s.tool)].params[static_cast<size_t>(s.param)];
        cap = p.max_chars, exact = p.exact;
        break;
      }
    }
    if (!cont && b < 0x20 && b != '\n' && b != '\t' && b != '\r') return false;
    int next = dfa->Next(s.dfa, b);
    if (next == kDead) return false;
    const bool closing = s.closing || s.full || (exact && s.count >= cap);
    if (closing) {
      // Only the way to the region's closer: the terminator, or (content
      // without a required tool call) the EOS token, which is not a byte. A
      // marker under way must go on byte by byte; a character begun before
      // the cap may finish.
      const bool toward_now = s.dfa != 0 && dfa->TowardTerminator(s.dfa);
      const bool toward_next = next == kFire || (next > 0 && dfa->TowardTerminator(next));
      if (toward_now) {
        if (!toward_next || (next != kFire && dfa->text(next).size() != dfa->text(s.dfa).size() + 1)) return false;
      } else if (!cont) {
        bool closer_is_eos = s.pc == kContent && !opt.require_tool_call;
        if (closer_is_eos || !dfa->has_terminator() || !toward_next) return false;
      }
    }
    if (!cont) ++s.count;
    if (next != kFire) {
      s.dfa = next;
      return true;
    }
    s.dfa = 0;
    s.count = 0;
    s.full = 0;
    switch (s.pc) {
      case kReasoning: s.pc = kContent; break;
      case kContent: s.pc = kLitTcOpen, s.pos = 0; break;
      default: s.pc = kLitAfterParam, s.pos = 0; break;
    }
    return true;
  }

  // At a token boundary: a free region (or a JSON string without maxLength)
  // past its cap accepts only its closer from now on.
  void CheckCaps(State& s) const {
    if (s.pc == kReasoning && s.count >= opt.max_reasoning_chars) s.full = 1;
    if (s.pc == kContent && s.count >= opt.max_content_chars) s.full = 1;
    if (s.pc == kValueStr) {
      const Param& p = tools[static_cast<size_t>(s.tool)].params[static_cast<size_t>(s.param)];
      if (!p.exact && s.count >= p.max_chars) s.full = 1;
    }
    if (s.pc == kJson && s.depth > 0) {
      Frame& f = s.frames[s.depth - 1];
      const JsonNode& n = nodes[f.node];
      if (n.kind == Kind::kString && !n.exact && f.stage == 1 && f.n >= n.max_chars) f.stage = 2;
    }
  }

  // Advances by one byte; false: the byte is not allowed here.
  bool Step(State& s, uint8_t b) const {
    bool cont = false;
    if (s.utf8_need) {
      if (b < s.utf8_lo || b > s.utf8_hi) return false;
      --s.utf8_need;
      s.utf8_lo = 0x80, s.utf8_hi = 0xBF;
      cont = true;
    } else if (b >= 0x80) {
      if (b >= 0xC2 && b <= 0xDF) {
        s.utf8_need = 1;
      } else if (b == 0xE0) {
        s.utf8_need = 2, s.utf8_lo = 0xA0;
      } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
        s.utf8_need = 2;
      } else if (b == 0xED) {
        s.utf8_need = 2, s.utf8_hi = 0x9F;
      } else if (b == 0xF0) {
        s.utf8_need = 3, s.utf8_lo = 0x90;
      } else if (b >= 0xF1 && b <= 0xF3) {
        s.utf8_need = 3;
      } else if (b == 0xF4) {
        s.utf8_need = 3, s.utf8_hi = 0x8F;
      } else {
        return false;
      }
    }
    switch (s.pc) {
      case kReasoning:
      case kContent:
      case kValueStr: return FreeStep(s, b, cont);
      case kLitTcOpen:
      case kLitAfterParam:
      case kLitParamClose: return LitStep(s, b);
      case kChoiceInvoke: {
        int chosen;
        if (!ChoiceStep(s, invoke_options, b, [&](size_t k) { return InvokeOptionAllowed(s, k); }, &chosen))
          return false;
        if (chosen >= 0) {
          int t = invoke_tool[static_cast<size_t>(chosen)];
          if (t < 0) {
            s.pc = kEosOnly;
          } else {
            ++s.invokes;
            s.tool = static_cast<int16_t>(t);
            s.used = 0;
            EnterChoice(s, kChoiceParam, tools[static_cast<size_t>(t)].options.size());
          }
        }
        return true;
      }
      case kChoiceParam: {
        int chosen;
        const Tool& tool = tools[static_cast<size_t>(s.tool)];
        if (!ChoiceStep(s, tool.options, b, [&](size_t k) { return ParamOptionAllowed(s, k); }, &chosen))
          return false;
        if (chosen >= 0) {
          int p = tool.option_param[static_cast<size_t>(chosen)];
          if (p < 0) {
            s.tool = -1;
            s.used = 0;
            EnterChoice(s, kChoiceInvoke, invoke_options.size());
          } else {
            StartParamValue(s, p);
          }
        }
        return true;
      }
      case kJson: return JsonStep(s, b, cont);
      case kEosOnly:
      case kDone: return false;
    }
    return false;
  }

  // Free text with nothing pending, far from any per-byte limit: plain tokens
  // (TokenBytes::plain_ids) are allowed without stepping them.
  bool PlainFree(const State& s) const {
    if (s.dfa != 0 || s.utf8_need || s.closing || s.full) return false;
    if (s.pc == kReasoning || s.pc == kContent) return true;
    if (s.pc != kValueStr) return false;
    const Param& p = tools[static_cast<size_t>(s.tool)].params[static_cast<size_t>(s.param)];
    return !p.exact || s.count + clamp < p.max_chars;
  }

  bool EosAllowed(const State& s) const {
    if (s.utf8_need) return false;
    if (s.pc == kEosOnly) return true;
    return s.pc == kContent && !opt.require_tool_call && !content_dfa.Poisoned(s.dfa);
  }

  // Cache key: every field the automaton reads, counters clamped.
  std::string Key(const State& s) const {
    std::string k;
    auto put = [&](auto v) { k.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
    auto near = [&](uint32_t count, uint32_t cap) { return count >= cap ? 0u : std::min(cap - count, clamp); };
    put(static_cast<uint8_t>(s.pc));
    put(s.closing);
    put(s.utf8_need), put(s.utf8_lo), put(s.utf8_hi);
    switch (s.pc) {
      case kReasoning:
      case kContent: put(s.dfa), put(s.full); break;
      case kValueStr: {
        const Param& p = tools[static_cast<size_t>(s.tool)].params[static_cast<size_t>(s.param)];
        put(s.dfa), put(s.full), put(p.exact ? near(s.count, p.max_chars) : 0u), put(s.tool), put(s.param), put(s.used);
        break;
      }
      case kLitTcOpen: put(s.pos), put(s.invokes); break;
      case kLitAfterParam:
      case kLitParamClose: put(s.pos), put(s.tool), put(s.used); break;
      case kChoiceInvoke: put(s.pos), put(s.lo), put(s.hi), put(s.invokes); break;
      case kChoiceParam: put(s.pos), put(s.lo), put(s.hi), put(s.tool), put(s.used); break;
      case kJson:
        put(s.tool), put(s.used), put(s.depth);
        for (int i = 0; i < s.depth; ++i) {
          const Frame& f = s.frames[i];
          const JsonNode& n = nodes[f.node];
          put(f.node), put(f.stage), put(f.pos), put(f.lo), put(f.hi);
          uint32_t cnt = f.n;
          if (n.kind == Kind::kString) cnt = n.exact ? near(f.n, n.max_chars) : 0;
          if (n.kind == Kind::kArray) cnt = near(f.n, n.max_items);
          if (n.kind == Kind::kInteger || n.kind == Kind::kNumber) cnt = f.n;
          put(cnt);
        }
        break;
      case kEosOnly:
      case kDone: break;
    }
    // After the invoke limit only the block's end remains.
    if (s.pc == kChoiceInvoke || s.pc == kLitTcOpen) put(static_cast<uint8_t>(s.invokes >= opt.max_tool_calls));
    return k;
  }
};

// ---------------------------------------------------------------------------

std::shared_ptr<const TokenBytes> TokenBytes::Build(const v4::Tokenizer& tokenizer) {
  auto tb = std::make_shared<TokenBytes>();
  const size_t n = tokenizer.vocab_size();
  tb->bytes_.resize(n);
  tb->special_.resize(n);
  for (size_t id = 0; id < n; ++id) {
    uint32_t u = static_cast<uint32_t>(id);
    tb->bytes_[id] = tokenizer.Decode(std::span<const uint32_t>(&u, 1));
    auto sid = tb->bytes_[id].empty() ? std::nullopt : tokenizer.TokenId(tb->bytes_[id]);
    tb->special_[id] = sid.has_value() && *sid == u;
    if (!tb->special_[id]) tb->max_len_ = std::max(tb->max_len_, tb->bytes_[id].size());
  }
  if (auto eos = tokenizer.TokenId(kEos)) tb->eos_id_ = static_cast<int32_t>(*eos);
  for (size_t id = 0; id < n; ++id) {
    const std::string& b = tb->bytes_[id];
    if (tb->special_[id] || b.empty()) continue;
    bool plain = true;
    for (size_t i = 0; i < b.size() && plain;) {
      unsigned char c = b[i];
      if (c < 0x80) {
        plain = c >= 0x20 && c != 0x7F && c != '<' && c != '/';
        ++i;
        continue;
      }
      size_t len = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEE) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
      if (len == 0 || i + len > b.size()) {
        plain = false;
        break;
      }
      unsigned char lo = 0x80, hi = 0xBF;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
      for (size_t k = 1; k < len && plain; ++k) {
        unsigned char d = b[i + k];
        plain = k == 1 ? (d >= lo && d <= hi) : (d >= 0x80 && d <= 0xBF);
      }
      i += len;
    }
    (plain ? tb->plain_ids_ : tb->other_ids_).push_back(static_cast<int32_t>(id));
  }
  // Trie over regular tokens, children as sibling lists.
  tb->trie_.push_back(Node{});
  std::vector<std::vector<int32_t>> at_node(1);
  for (size_t id = 0; id < n; ++id) {
    const std::string& b = tb->bytes_[id];
    if (tb->special_[id] || b.empty()) continue;
    uint32_t cur = 0;
    for (unsigned char c : b) {
      uint32_t child = tb->trie_[cur].first_child, prev = 0;
      while (child && tb->trie_[child].byte != c) prev = child, child = tb->trie_[child].next_sibling;
      if (!child) {
        Node nn;
        nn.byte = c;
        child = static_cast<uint32_t>(tb->trie_.size());
        tb->trie_.push_back(nn);
        at_node.emplace_back();
        if (prev) {
          tb->trie_[prev].next_sibling = child;
        } else {
          tb->trie_[cur].first_child = child;
        }
      }
      cur = child;
    }
    at_node[cur].push_back(static_cast<int32_t>(id));
  }
  for (size_t i = 0; i < tb->trie_.size(); ++i) {
    tb->trie_[i].tokens_begin = static_cast<uint32_t>(tb->ids_.size());
    tb->ids_.insert(tb->ids_.end(), at_node[i].begin(), at_node[i].end());
    tb->trie_[i].tokens_end = static_cast<uint32_t>(tb->ids_.size());
  }
  return tb;
}

Result<std::shared_ptr<ToolGrammar>> ToolGrammar::Build(const nlohmann::json& tools,
                                                        std::shared_ptr<const TokenBytes> vocab,
                                                        GrammarOptions options) {
  if (!vocab || vocab->eos_id() < 0)
    return Error(Code::kFailedPrecondition, "constraint: the tokenizer has no <｜end▁of▁sentence｜> token");
  auto impl = std::make_shared<Impl>();
  impl->opt = options;
  if (Status st = impl->Build(tools, *vocab); !st.ok()) return st;
  std::shared_ptr<ToolGrammar> g(new ToolGrammar());
  g->vocab_ = std::move(vocab);
  g->options_ = impl->opt;
  g->impl_ = std::move(impl);
  return g;
}

void ToolGrammar::ClearCache() const {
  std::lock_guard lock(mu_);
  cache_.clear();
  cache_bytes_ = 0;
}

size_t ToolGrammar::cached_masks() const {
  std::lock_guard lock(mu_);
  return cache_.size();
}

class ToolConstraint : public TokenConstraint {
 public:
  using State = ToolGrammar::Impl::State;

  ToolConstraint(std::shared_ptr<const ToolGrammar> g, int max_new_tokens)
      : g_(std::move(g)), impl_(*g_->impl_), state_(impl_.Initial()), budget_(max_new_tokens) {
    UpdateClosing();
  }

  void AllowedNext(std::vector<uint8_t>& allowed) override {
    if (state_.pc == ToolGrammar::Impl::kDone) return;
    std::string key = impl_.Key(state_);
    std::shared_ptr<const ToolGrammar::Mask> mask;
    {
      std::lock_guard lock(g_->mu_);
      auto it = g_->cache_.find(key);
      if (it != g_->cache_.end()) {
        mask = it->second;
        ++g_->hits_;
      }
    }
    if (!mask) {
      mask = Compute();
      std::lock_guard lock(g_->mu_);
      ++g_->misses_;
      // Bounded; masks are rebuilt on demand after a clear.
      size_t bytes = key.size() + 64 + (mask->dense ? mask->bytes.size() : mask->ids.size() * 4);
      if (g_->cache_.size() >= 50000 || g_->cache_bytes_ + bytes > kMaxCacheBytes) {
        g_->cache_.clear();
        g_->cache_bytes_ = 0;
      }
      if (g_->cache_.emplace(std::move(key), mask).second) g_->cache_bytes_ += bytes;
    }
    const size_t n = std::min(allowed.size(), g_->vocab_->vocab_size());
    if (mask->dense) {
      std::memcpy(allowed.data(), mask->bytes.data(), n);
    } else {
      for (int32_t id : mask->ids)
        if (static_cast<size_t>(id) < n) allowed[static_cast<size_t>(id)] = 1;
    }
  }

  void Accept(int32_t token) override {
    ++accepted_;
    const TokenBytes& v = *g_->vocab_;
    if (token == v.eos_id()) {
      state_.pc = ToolGrammar::Impl::kDone;
      return;
    }
    if (token < 0 || static_cast<size_t>(token) >= v.vocab_size() || v.special(token)) {
      state_.pc = ToolGrammar::Impl::kDone;  // not allowed; stop rather than emit garbage
      return;
    }
    for (unsigned char c : v.bytes(token)) {
      if (!impl_.Step(state_, c)) {
        state_.pc = ToolGrammar::Impl::kDone;
        return;
      }
    }
    UpdateClosing();
  }

  bool Complete() const override { return state_.pc == ToolGrammar::Impl::kDone; }

 private:
  void UpdateClosing() {
    impl_.CheckCaps(state_);
    if (budget_ > 0 && static_cast<size_t>(accepted_) + impl_.close_reserve >= static_cast<size_t>(budget_))
      state_.closing = 1;
  }

  std::shared_ptr<const ToolGrammar::Mask> Compute() const {
    const TokenBytes& v = *g_->vocab_;
    const auto& trie = v.trie();
    const auto& ids = v.trie_ids();
    std::vector<int32_t> out;
    if (impl_.EosAllowed(state_)) out.push_back(v.eos_id());
    if (impl_.PlainFree(state_)) {
      out.insert(out.end(), v.plain_ids().begin(), v.plain_ids().end());
      for (int32_t id : v.other_ids()) {
        State s = state_;
        bool ok = true;
        for (unsigned char c : v.bytes(id))
          if (!(ok = impl_.Step(s, c))) break;
        if (ok) out.push_back(id);
      }
      return MakeMask(std::move(out));
    }
    // Depth-first over the trie, carrying the automaton state: states[d] is the
    // state after the node at depth d on the current path (depth 0: now).
    std::vector<State> states(v.max_token_bytes() + 2);
    states[0] = state_;
    std::vector<std::pair<uint32_t, uint32_t>> stack;  // (node, depth)
    stack.reserve(1024);
    for (uint32_t c = trie[0].first_child; c; c = trie[c].next_sibling) stack.push_back({c, 1});
    while (!stack.empty()) {
      auto [id, depth] = stack.back();
      stack.pop_back();
      const auto& node = trie[id];
      State& s = states[depth];
      s = states[depth - 1];
      if (!impl_.Step(s, node.byte)) continue;
      for (uint32_t k = node.tokens_begin; k < node.tokens_end; ++k) out.push_back(ids[k]);
      for (uint32_t c = node.first_child; c; c = trie[c].next_sibling) stack.push_back({c, depth + 1});
    }
    return MakeMask(std::move(out));
  }

  std::shared_ptr<const ToolGrammar::Mask> MakeMask(std::vector<int32_t> out) const {
    const TokenBytes& v = *g_->vocab_;
    auto mask = std::make_shared<ToolGrammar::Mask>();
    if (out.size() < 4096) {
      std::sort(out.begin(), out.end());
      mask->ids = std::move(out);
    } else {
      mask->dense = true;
      mask->bytes.assign(v.vocab_size(), 0);
      for (int32_t id : out) mask->bytes[static_cast<size_t>(id)] = 1;
    }
    return mask;
  }

  std::shared_ptr<const ToolGrammar> g_;
  const ToolGrammar::Impl& impl_;
  State state_;
  int budget_;
  int accepted_ = 0;
};

std::unique_ptr<TokenConstraint> ToolGrammar::NewConstraint(int max_new_tokens) const {
  return std::make_unique<ToolConstraint>(shared_from_this(), max_new_tokens);
}

}  // namespace paddock::policy::engine::constrain
