// Where a front's nodes are: `paddockd --nodes SPEC`.
//   host:port,host:port   a static list
//   dns:NAME:PORT         every address NAME resolves to (a Kubernetes headless
//                         Service), resolved again at every refresh
//   file:PATH             one host:port per line (# comments), read again when
//                         the file changes
// Nodes join and leave as the answer changes; the fleet keeps the state of
// those that stay.
#pragma once

#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::fleet {

class NodeDiscovery {
 public:
  // INVALID_ARGUMENT naming the part of SPEC at fault.
  static Result<NodeDiscovery> Parse(const std::string& spec);

  // The node addresses now ("host:port", sorted, no repeats). A DNS name that
  // resolves to nothing, or a missing file, is an error the fleet reports (and
  // keeps the nodes it knew).
  Result<std::vector<std::string>> Resolve() const;
  const std::string& spec() const { return spec_; }

 private:
  enum class Kind { kStatic, kDns, kFile };
  Kind kind_ = Kind::kStatic;
  std::string spec_;
  std::vector<std::string> list_;  // kStatic
  std::string name_, port_;        // kDns
  std::string path_;               // kFile
};

// "host:port" with a port in 1..65535 and a host of letters, digits, '.', '-'
// (or an IPv6 address in brackets); INVALID_ARGUMENT otherwise.
Status ValidateNodeAddress(const std::string& address);

}  // namespace paddock::fleet
