// paddockd: the Paddock daemon. Owns every sandbox on this host and serves the
// uniform sandbox API over a unix socket (and, optionally, TCP with a token).
//
// Start-up order matters: signals are blocked before any thread exists (so only
// the signal thread ever sees SIGTERM/SIGINT), the state directory is locked
// before anything in it is touched, and the reaper clears what a crashed
// predecessor left before new sandboxes are created next to it.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <grpc/grpc.h>
#include <spdlog/spdlog.h>

#include "replay/trajectory_log.h"
#include "rollout/fleet/fleet.h"
#include "rollout/fleet/node_service.h"
#include "rollout/service/auth.h"
#include "rollout/service/front_leases.h"
#include "rollout/service/metrics.h"
#include "policy/engine/server/http_server.h"
#include "rollout/service/server.h"
#include "rollout/engine/rollout_engine.h"
#include "rollout/service/rollout_service.h"
#include "sandbox/base/unique_fd.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/function/function_substrate.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/microvm_substrate.h"
#include "sandbox/reaper.h"
#include "rollout/service/image_service.h"
#include "sandbox/image_source.h"
#include "storage/store_image_resolver.h"
#include "storage/image_store.h"
#include "policy/backends/tls.h"
#include "storage/registry/on_demand_pull.h"
#include "storage/layer_cache.h"

namespace fs = std::filesystem;
using namespace paddock;

namespace {

struct Flags {
  std::string state_dir = "/var/lib/paddock";
  std::string socket;
  std::string listen_tcp;
  bool allow_remote = false;
  bool allow_dir_images = false;
  std::string tls_cert, tls_key, tls_client_ca;
  std::string token_file;
  uint32_t max_sandboxes = 1000;
  uint32_t max_running_episodes = 0;  // 0: max_sandboxes
  size_t warm_pool = 4;
  size_t microvm_warm_pool = 2;  // pre-booted VMs per recipe
  std::string microvm_accel;     // kvm (default) or tcg
  bool allow_tcg_microvms = false;  // TCG is not a security boundary: opt in
  std::string microvm_templates;  // on|off; empty: PADDOCK_MICROVM_TEMPLATES, else on
  uint32_t default_ttl = 3600;
  std::string log_level = "info";
  std::string init_path;
  std::string log_dir;       // default <state-dir>/log
  std::string restore_log;   // a backup dir to restore into the log before opening it
  bool log_allow_corruption = false;
  std::string image_store;     // default <state-dir>/images
  std::string layer_cache;     // default <state-dir>/layer-cache
  uint64_t layer_cache_max_bytes = 0;
  int64_t registry_timeout_ms = 60000;       // a registry request's deadline (layers get more)
  int64_t registry_idle_timeout_ms = 30000;  // a registry connection silent this long is dropped
  std::vector<std::string> insecure_registries;  // plain HTTP to these hosts (loopback always)
  std::string registry_ca_file;                  // verify registries with these CAs, not the system's
  std::string registry_creds_file;               // docker config format; none by default
  // A node's side of the fleet: how long a front's sandboxes outlive its silence.
  int64_t front_lease_ms = 5000;
  uint32_t drain_grace_s = 0;  // on SIGTERM: time the live sandboxes get before they are destroyed
  std::string metrics_listen;  // HOST:PORT of GET /metrics; empty: none
  // A front's side (rollout/fleet): where its sandboxes go.
  std::string nodes;
  std::string node_token_file;
  std::string node_tls_ca, node_tls_cert, node_tls_key;
  int64_t node_heartbeat_ms = 1000;
  double node_create_rate = 50;
  int64_t place_timeout_ms = 30000;
  std::string front_id;
  // Both sides: how long handing a node an image of a front's store may take.
  int64_t image_fetch_timeout_ms = 600000;
};

// A node given notice (SIGTERM with --drain-grace-s): it takes no new sandboxes
// (its Stats say draining, so fronts place elsewhere) and waits for the live
// ones to end, up to the grace. What is left is destroyed while the API still
// answers, so that a front's next call hears NOT_FOUND at once and rebuilds
// the episode elsewhere instead of waiting out the lease.
void DrainBeforeStop(SandboxManager& manager, const sigset_t& sigs, std::chrono::seconds grace) {
  manager.SetDraining(true);
  spdlog::info("draining: no new sandboxes; the {} live one(s) get up to {} s (SIGTERM again stops at once)",
               manager.live(), grace.count());
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (manager.live() > 0 && std::chrono::steady_clock::now() < deadline) {
    timespec tick{0, 100 * 1000 * 1000};
    if (sigtimedwait(&sigs, nullptr, &tick) > 0) {
      spdlog::info("second signal: stopping now");
      return;
    }
  }
  if (manager.live() == 0) {
    spdlog::info("drained: no sandbox left");
    return;
  }
  std::vector<SandboxInfo> left = manager.List();
  spdlog::warn("drain grace over: destroying the {} sandbox(es) left", left.size());
  for (const SandboxInfo& s : left) (void)manager.Destroy(s.id);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // fronts' calls in flight hear NOT_FOUND
}

void AppendEngineAndLogMetrics(std::string& out, const rollout::RolloutEngine& engine, const replay::TrajectoryLog& log) {
  rollout::EngineStats e = engine.stats();
  auto d = [](uint64_t v) { return static_cast<double>(v); };
  service::AppendMetric(out, "paddock_rollout_turns_total", "counter", "Policy turns completed (live or replayed).",
                        {{"", d(e.turns)}});
  service::AppendMetric(out, "paddock_rollout_policy_calls_total", "counter", "Policy calls.",
                        {{"kind=\"live\"", d(e.live_policy_calls)}, {"kind=\"replayed\"", d(e.replayed_policy_calls)}});
  service::AppendMetric(out, "paddock_rollout_tool_calls_total", "counter", "Tool calls.",
                        {{"kind=\"live\"", d(e.live_tool_calls)},
                         {"kind=\"replayed\"", d(e.replayed_tool_calls)},
                         {"kind=\"reapplied\"", d(e.reapplied_tool_calls)}});
  service::AppendMetric(out, "paddock_rollout_relocations_total", "counter",
                        "Episodes moved to a new sandbox after theirs was lost with its node: rebuilt ahead of their "
                        "next call (eager) or when a call met the loss.",
                        {{"kind=\"eager\"", d(e.eager_relocations)},
                         {"kind=\"on_call\"", d(e.relocated_episodes - e.eager_relocations)}});
  service::AppendMetric(out, "paddock_rollout_episodes", "gauge",
                        "Rollout episodes: running, queued for a slot, and the bound on running ones.",
                        {{"state=\"running\"", d(e.running_episodes)},
                         {"state=\"queued\"", d(e.queued_episodes)},
                         {"state=\"max\"", d(e.max_running_episodes)}});
  replay::CommitStats c = log.GetCommitStats();
  service::AppendMetric(out, "paddock_log_writes_total", "counter", "Trajectory log writes.", {{"", d(c.writes)}});
  service::AppendMetric(out, "paddock_log_syncs_total", "counter", "Trajectory log syncs (one per commit group).",
                        {{"", d(c.syncs)}});
}

void AppendFleetMetrics(std::string& out, const fleet::Fleet& fleet) {
  std::map<std::string, double> states = {{"connecting", 0}, {"ready", 0}, {"draining", 0}, {"lost", 0}, {"refused", 0}};
  std::vector<std::pair<std::string, double>> live, placed, up;
  for (const fleet::NodeStatus& n : fleet.List()) {
    states[n.state] += 1;
    std::string label = fmt::format("node=\"{}\"", service::EscapeLabel(n.address));
    live.emplace_back(label, n.live);
    placed.emplace_back(label, n.placed);
    up.emplace_back(label, n.state == "ready" ? 1.0 : 0.0);
  }
  std::vector<std::pair<std::string, double>> by_state;
  for (const auto& [state, count] : states) by_state.emplace_back(fmt::format("state=\"{}\"", state), count);
  service::AppendMetric(out, "paddock_nodes", "gauge", "This front's nodes by state.", by_state);
  service::AppendMetric(out, "paddock_node_ready", "gauge", "1 when the node takes sandboxes.", up);
  service::AppendMetric(out, "paddock_node_live_sandboxes", "gauge", "Live sandboxes on the node, as it reported.",
                        live);
  service::AppendMetric(out, "paddock_node_placed_sandboxes", "gauge", "This front's sandboxes on the node.", placed);
  service::AppendMetric(out, "paddock_image_handovers_total", "counter",
                        "Images this front handed to nodes that lacked them (each one fetch by a node).",
                        {{"", static_cast<double>(fleet.images_handed())}});
}

// Images this daemon fetched into its store: handed over by a front (a node's
// Images.Receive) and pulled from a registry on first use.
void AppendImageFetchMetrics(std::string& out, uint64_t from_front, uint64_t from_registry) {
  service::AppendMetric(out, "paddock_image_fetches_total", "counter",
                        "Images fetched into this daemon's store: from a front (hand-overs) or a registry (pulls "
                        "on first use, counted when started).",
                        {{"source=\"front\"", static_cast<double>(from_front)},
                         {"source=\"registry\"", static_cast<double>(from_registry)}});
}

std::string DefaultSocket() {
  const char* env = std::getenv("PADDOCK_SOCKET");
  return env && *env ? env : "/run/paddock/paddockd.sock";
}

// paddock-init ships beside the daemon: in the build tree it is
// build/sandbox/paddock-init next to build/rollout/paddockd; installed, it sits
// in the same directory or under /usr/local/lib/paddock.
std::string DefaultInitPath() {
  std::error_code ec;
  fs::path dir = fs::read_symlink("/proc/self/exe", ec).parent_path();
  for (const fs::path& p : {dir / ".." / "sandbox" / "paddock-init", dir / "paddock-init"})
    if (fs::exists(p, ec)) return fs::weakly_canonical(p, ec).string();
  return "/usr/local/lib/paddock/paddock-init";
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

// "HOST:PORT", ":PORT" or "PORT"; the host defaults to loopback.
Result<std::string> ParseTcpAddress(const std::string& spec, bool allow_remote, bool tls) {
  std::string host = "127.0.0.1", port = spec;
  size_t colon = spec.rfind(':');
  if (colon != std::string::npos) {
    host = spec.substr(0, colon);
    port = spec.substr(colon + 1);
    if (host.empty()) host = "127.0.0.1";
  }
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoul(port) > 65535)
    return Error(Code::kInvalidArgument, "--listen-tcp '{}': expected HOST:PORT, e.g. 127.0.0.1:7443",
                 spec);
  if (!IsLoopbackHost(host) && !allow_remote)
    return Error(Code::kInvalidArgument,
                 "--listen-tcp {} would accept calls from other machines; pass --allow-remote "
                 "as well if that is intended",
                 spec);
  if (!IsLoopbackHost(host) && !tls)
    return Error(Code::kInvalidArgument,
                 "--listen-tcp {} is not a loopback address: calls from other machines must be "
                 "encrypted; pass --tls-cert and --tls-key (and --tls-client-ca to require client "
                 "certificates)",
                 spec);
  return host + ":" + port;
}

// Holds the state directory for this process. A POSIX record lock (fcntl), not
// flock(2): a record lock belongs to the process and is not inherited by
// fork()ed children, so a zygote or container helper that outlives a crashed
// daemon cannot keep the directory locked against its successor.
class StateDirLock {
 public:
  static Result<StateDirLock> Acquire(const std::string& state_dir) {
    std::string lock_path = state_dir + "/paddockd.lock";
    UniqueFd fd(open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd.valid()) return ErrnoError(fmt::format("opening {}", lock_path));
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fd.get(), F_SETLK, &fl) != 0) {
      if (errno != EACCES && errno != EAGAIN) return ErrnoError(fmt::format("locking {}", lock_path));
      fcntl(fd.get(), F_GETLK, &fl);
      return Error(Code::kFailedPrecondition,
                   "another paddockd (pid {}) is using state dir {}; stop it first or pass a "
                   "different --state-dir",
                   fl.l_type == F_UNLCK ? 0 : fl.l_pid, state_dir);
    }
    StateDirLock lock;
    lock.fd_ = std::move(fd);
    lock.pid_path_ = state_dir + "/paddockd.pid";
    std::string pid = std::to_string(getpid()) + "\n";
    UniqueFd pf(open(lock.pid_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!pf.valid() || write(pf.get(), pid.data(), pid.size()) != static_cast<ssize_t>(pid.size()))
      return ErrnoError(fmt::format("writing {}", lock.pid_path_));
    return lock;
  }
  void RemovePidFile() { unlink(pid_path_.c_str()); }

 private:
  UniqueFd fd_;
  std::string pid_path_;
};

void LogReap(const ReapReport& r) {
  int total = r.processes_killed + r.mounts_removed + r.cgroups_removed + r.dirs_removed;
  if (total > 0)
    spdlog::info("reaped leftovers of an earlier daemon: {} processes killed, {} mounts removed, "
                 "{} cgroups removed, {} directories removed",
                 r.processes_killed, r.mounts_removed, r.cgroups_removed, r.dirs_removed);
  else
    spdlog::info("no leftovers of an earlier daemon to reap");
  // ReapLeftovers itself logs each error.
}

int Run(const Flags& flags) {
  // 1. Block the shutdown signals in this thread before any other thread
  //    exists; every thread inherits the mask and only sigwait() sees them.
  //    A shell that starts us with `&` leaves SIGINT and SIGQUIT ignored; an
  //    ignored signal is discarded, never pending for sigwait, and sandbox
  //    processes would inherit the ignoring. Restore the defaults first.
  for (int s : {SIGINT, SIGTERM, SIGQUIT}) signal(s, SIG_DFL);
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client hanging up is an error return, not a crash

  // 2. The state directory, locked against a second daemon.
  std::error_code ec;
  fs::create_directories(flags.state_dir, ec);
  if (ec) {
    spdlog::error("cannot create state dir {}: {}", flags.state_dir, ec.message());
    return 1;
  }
  // Searchable by the sandboxes' unprivileged host users (their roots are
  // mounted below it), listable by nobody else; the image store, layer cache,
  // views and log below it are 0700 (docs/security.md).
  if (chmod(flags.state_dir.c_str(), 0711) != 0) {
    spdlog::error("cannot set the mode of state dir {} to 0711: {}", flags.state_dir, std::strerror(errno));
    return 1;
  }
  auto lock = StateDirLock::Acquire(flags.state_dir);
  if (!lock.ok()) {
    spdlog::error("{}", lock.status().message());
    return 1;
  }

  // 3. Helpers and token, checked before anything is started.
  SubstrateEnv env;
  env.state_dir = fs::absolute(flags.state_dir).string();
  env.init_path = flags.init_path.empty() ? DefaultInitPath() : flags.init_path;
  env.warm_pool_size = flags.warm_pool;
  if (!fs::exists(env.init_path, ec)) {
    spdlog::error("paddock-init not found at {}; build it (cmake --build build) or pass --init-path",
                  env.init_path);
    return 1;
  }
  service::ServerOptions server_opts;
  server_opts.socket_path = flags.socket.empty() ? DefaultSocket() : flags.socket;
  if (!flags.listen_tcp.empty()) {
    if (flags.tls_cert.empty() != flags.tls_key.empty()) {
      spdlog::error("--tls-cert and --tls-key go together");
      return 1;
    }
    if (!flags.tls_client_ca.empty() && flags.tls_cert.empty()) {
      spdlog::error("--tls-client-ca needs TLS: pass --tls-cert and --tls-key as well");
      return 1;
    }
    auto addr = ParseTcpAddress(flags.listen_tcp, flags.allow_remote, !flags.tls_cert.empty());
    if (!addr.ok()) {
      spdlog::error("{}", addr.status().message());
      return 1;
    }
    if (flags.token_file.empty()) {
      spdlog::error("--listen-tcp needs --token-file: a file holding the secret clients must send "
                    "as 'authorization: Bearer <token>'");
      return 1;
    }
    auto token = service::LoadTokenFile(flags.token_file);
    if (!token.ok()) {
      spdlog::error("{}", token.status().message());
      return 1;
    }
    server_opts.tcp_address = *addr;
    server_opts.token = *token;
    if (!flags.tls_cert.empty()) {
      auto tls = service::LoadServerTls(flags.tls_cert, flags.tls_key, flags.tls_client_ca);
      if (!tls.ok()) {
        spdlog::error("{}", tls.status().message());
        return 1;
      }
      server_opts.tls = *tls;
    }
  } else if (!flags.tls_cert.empty() || !flags.tls_client_ca.empty()) {
    spdlog::error("--tls-cert, --tls-key and --tls-client-ca apply to --listen-tcp only");
    return 1;
  }
  spdlog::info("paddockd starting: state dir {}, paddock-init {}", env.state_dir, env.init_path);

  // 3b. The trajectory log: restored from a backup first when asked (it must
  //     not be open then, and under the state-dir lock nobody else has it),
  //     then opened. The daemon does not serve without it.
  std::string log_dir = flags.log_dir.empty() ? env.state_dir + "/log" : flags.log_dir;
  if (!flags.restore_log.empty()) {
    if (Status st = replay::TrajectoryLog::Restore(flags.restore_log, log_dir); !st.ok()) {
      spdlog::error("cannot restore the trajectory log from {} into {}: {}", flags.restore_log,
                    log_dir, st.message());
      return 1;
    }
    spdlog::info("restored the trajectory log at {} from the latest backup in {}", log_dir,
                 flags.restore_log);
  }
  replay::LogOptions log_opts;
  log_opts.dir = log_dir;
  log_opts.allow_corruption = flags.log_allow_corruption;
  log_opts.created_by = "paddockd";
  auto log = replay::TrajectoryLog::Open(log_opts);
  if (!log.ok()) {
    spdlog::error("cannot open the trajectory log at {}: {}. paddockd does not start without its "
                  "log: fix the path (--log-dir) or its filesystem; a corrupt log can be restored "
                  "from a backup (--restore-log DIR) or opened anyway (--log-allow-corruption)",
                  log_dir, log.status().message());
    return 1;
  }
  spdlog::info("trajectory log open at {}", log_dir);
  server_opts.log = log->get();
  server_opts.log_dir = log_dir;

  // 3c. The image store (may be shared storage) and this node's layer cache;
  //     sandbox images resolve through them (sandbox/image_source.h).
  std::string image_root = flags.image_store.empty() ? env.state_dir + "/images" : flags.image_store;
  auto image_store = storage::ImageStore::Open(image_root);
  if (!image_store.ok()) {
    spdlog::error("cannot open the image store at {}: {} (--image-store)", image_root,
                  image_store.status().message());
    return 1;
  }
  std::string cache_dir = flags.layer_cache.empty() ? env.state_dir + "/layer-cache" : flags.layer_cache;
  storage::LayerCacheOptions cache_opts;
  cache_opts.max_bytes = flags.layer_cache_max_bytes;
  auto layer_cache = storage::LayerCache::Open(cache_dir, image_store->get(), cache_opts);
  if (!layer_cache.ok()) {
    spdlog::error("cannot open the layer cache at {}: {} (--layer-cache)", cache_dir,
                  layer_cache.status().message());
    return 1;
  }
  spdlog::info("image store at {}; layer cache at {} ({} layers kept, {} removed as invalid)",
               image_root, cache_dir, (*layer_cache)->open_report().kept,
               (*layer_cache)->open_report().removed_invalid + (*layer_cache)->open_report().removed_partial);
  // Pull on first use: a sandbox or task image naming a registry the store
  // lacks is pulled with the daemon's own registry options, once per node.
  storage::registry::PullOptions on_use;
  on_use.registry.request_timeout = std::chrono::milliseconds(flags.registry_timeout_ms);
  on_use.registry.http.idle_timeout = std::chrono::milliseconds(flags.registry_idle_timeout_ms);
  on_use.registry.http.insecure_hosts.insert(flags.insecure_registries.begin(), flags.insecure_registries.end());
  policy::TlsOptions registry_tls;
  registry_tls.ca_file = flags.registry_ca_file;
  on_use.registry.tls_everywhere = !flags.registry_ca_file.empty();
  auto registry_tls_ctx = policy::MakeTlsClientContext(registry_tls);
  if (!registry_tls_ctx.ok()) {
    spdlog::error("--registry-ca-file: {}", registry_tls_ctx.status().message());
    return 1;
  }
  on_use.registry.http.tls = *registry_tls_ctx;
  on_use.layer_cache = layer_cache->get();  // unpacked while downloading (one pass)
  storage::registry::OnDemandPuller on_demand_puller(**image_store, on_use, flags.registry_creds_file);
  storage::StoreImageResolver image_resolver(
      image_store->get(), layer_cache->get(), flags.allow_dir_images,
      storage::RegistryFetcher{[](const std::string& ref) { return storage::registry::NamesRegistryImage(ref); },
                      [&](const std::string& ref, bool local_client) {
                        return on_demand_puller.Ensure(ref, local_client);
                      }});
  if (flags.allow_dir_images)
    spdlog::warn("--allow-dir-images: sandboxes created over the unix socket may use host directories "
                 "as images (development only; never over TCP or from task files)");
  env.images = &image_resolver;
  // As a node: images fronts hand it (Images.Receive), one fetch per image.
  service::ImageReceiver image_receiver(**image_store, std::chrono::milliseconds(flags.image_fetch_timeout_ms));
  service::FrontLeases* leases_for_images = nullptr;  // set with the leases below, before serving
  SandboxManager* manager_for_images = nullptr;        // set once the manager is made, before serving
  server_opts.extra_services.push_back([&](const service::BearerTokenAuth* auth) {
    service::ImageServiceOptions io{std::chrono::milliseconds(flags.registry_timeout_ms),
                                    std::chrono::milliseconds(flags.registry_idle_timeout_ms),
                                    on_use.registry.http.insecure_hosts, flags.registry_ca_file,
                                    flags.registry_creds_file};
    io.receiver = &image_receiver;
    io.leases = leases_for_images;
    io.remove_memory_snapshot = [&manager_for_images](const std::string& image) -> Result<uint64_t> {
      if (!manager_for_images) return Error(Code::kUnavailable, "the daemon is starting");
      return manager_for_images->RemoveMemorySnapshot(image);
    };
    io.memory_snapshots = [&manager_for_images] {
      return manager_for_images ? manager_for_images->MemorySnapshots()
                                : std::vector<std::pair<std::string, uint64_t>>{};
    };
    return std::unique_ptr<grpc::Service>(
        std::make_unique<service::ImageService>(**image_store, layer_cache->get(), auth, io));
  });

  // 4. Clear what a crashed predecessor left behind.
  LogReap(ReapLeftovers(env));

  // 5. Substrates into the manager: this host's, or, on a front, the nodes'.
  ManagerOptions mopts;
  mopts.max_sandboxes = flags.max_sandboxes;
  mopts.default_ttl_seconds = flags.default_ttl;
  SandboxManager manager(mopts);
  manager_for_images = &manager;
  std::unique_ptr<fleet::Fleet> fleet;
  if (!flags.nodes.empty()) {
    fleet::FleetOptions fo;
    fo.nodes = flags.nodes;
    if (flags.node_token_file.empty()) {
      spdlog::error("--nodes needs --node-token-file: the file holding the token the nodes' --token-file holds");
      return 1;
    }
    auto token = service::LoadTokenFile(flags.node_token_file);
    if (!token.ok()) {
      spdlog::error("{}", token.status().message());
      return 1;
    }
    fo.token = *token;
    fo.tls_ca_file = flags.node_tls_ca;
    fo.tls_cert_file = flags.node_tls_cert;
    fo.tls_key_file = flags.node_tls_key;
    fo.tls = !flags.node_tls_ca.empty();
    fo.heartbeat = std::chrono::milliseconds(flags.node_heartbeat_ms);
    fo.creates_per_second = flags.node_create_rate;
    fo.front_id = flags.front_id;
    fo.place_timeout = std::chrono::milliseconds(flags.place_timeout_ms);
    fo.images = image_store->get();
    fo.image_timeout = std::chrono::milliseconds(flags.image_fetch_timeout_ms);
    auto started = fleet::Fleet::Start(fo);
    if (!started.ok()) {
      spdlog::error("{}", started.status().message());
      return 1;
    }
    fleet = std::move(*started);
    for (const char* name : {"function", "container", "microvm"})
      manager.RegisterSubstrate(fleet::MakeFleetSubstrate(*fleet, name));
  } else {
    manager.RegisterSubstrate(MakeFunctionSubstrate(env));
    manager.RegisterSubstrate(MakeContainerSubstrate(env));
  }
  if (!fleet) {
    SubstrateEnv vm_env = env;
    vm_env.warm_pool_size = flags.microvm_warm_pool;
    MicrovmOptions vm_opts = MicrovmOptionsFromEnvironment();
    if (!flags.microvm_accel.empty()) vm_opts.accel = flags.microvm_accel;
    // Only the flag accepts TCG (never the environment): it is no security boundary.
    vm_opts.allow_tcg = flags.allow_tcg_microvms;
    if (!flags.microvm_templates.empty()) vm_opts.templates = flags.microvm_templates == "on";
    // Registered even where KVM cannot run guests: creates then fail with the reason.
    Status accel = CheckAccelerator(vm_opts);
    if (!accel.ok()) spdlog::warn("microvm substrate: {}", accel.message());
    manager.RegisterSubstrate(MakeMicrovmSubstrate(vm_env, vm_opts), accel.ok());
    // MicroVMs an earlier daemon paused (`paddock sandbox pause`) are listed
    // again, paused, until resumed, destroyed or expired.
    manager.RecoverPaused();
  }
  // 5a. As a node: fronts' leases, and what they place by. As a front: its nodes.
  service::FrontLeases front_leases(manager, std::chrono::milliseconds(flags.front_lease_ms));
  server_opts.node.leases = &front_leases;
  leases_for_images = &front_leases;
  server_opts.node.draining = [&manager] { return manager.draining(); };
  server_opts.node.images = [store = image_store->get(), &manager, &fleet] {
    service::NodeParts::HeldImages held;
    // Its microVM memory snapshots first (the report keeps 256 names): a front
    // places creates from one only here (placement.h). A front asks its nodes
    // for theirs only when listing, never per heartbeat.
    if (!fleet)
      for (auto& [image, bytes] : manager.MemorySnapshots()) held.names.push_back(image);
    auto list = store->List();
    if (list.ok())
      for (const auto& img : *list) {
        held.ids.push_back(img.digest.str());
        for (const auto& n : img.names) held.names.push_back(n);
      }
    return held;
  };
  server_opts.node.images_fetched = [&image_receiver] { return image_receiver.fetched(); };
  server_opts.extra_services.push_back([&](const service::BearerTokenAuth* auth) {
    return std::unique_ptr<grpc::Service>(std::make_unique<fleet::NodeService>(fleet.get(), auth));
  });

  // 5b. The rollout engine and its Rollouts service (rollout/engine).
  rollout::RolloutEngine rollout_engine(manager, **log,
                                        rollout::EngineOptions{.max_running_episodes = flags.max_running_episodes});
  server_opts.node.queued_episodes = [&rollout_engine] {
    return static_cast<uint32_t>(rollout_engine.stats().queued_episodes);
  };
  server_opts.extra_services.push_back([&](const service::BearerTokenAuth* auth) {
    return std::unique_ptr<grpc::Service>(std::make_unique<service::RolloutService>(rollout_engine, auth));
  });

  // 5c. GET /metrics: this daemon's sandboxes, its rollout engine and log, and
  //     (a front) its nodes.
  std::unique_ptr<policy::engine::server::HttpServer> metrics_server;
  if (!flags.metrics_listen.empty()) {
    policy::engine::server::HttpServerOptions ho;
    if (Status st = policy::engine::server::ParseListen(flags.metrics_listen, &ho.host, &ho.port); !st.ok()) {
      spdlog::error("--metrics-listen: {}", st.message());
      return 1;
    }
    ho.max_body_bytes = 4096;
    ho.max_connections = 16;
    ho.idle_timeout_s = 30;
    ho.server_name = "paddockd";
    auto endpoint = std::make_shared<service::MetricsEndpoint>(manager, [&](std::string& out) {
      AppendEngineAndLogMetrics(out, rollout_engine, **log);
      AppendImageFetchMetrics(out, image_receiver.fetched(), on_demand_puller.pulls());
      if (fleet) AppendFleetMetrics(out, *fleet);
    });
    auto started = policy::engine::server::HttpServer::Start(endpoint, ho);
    if (!started.ok()) {
      spdlog::error("--metrics-listen {}: {}", flags.metrics_listen, started.status().message());
      return 1;
    }
    metrics_server = std::move(*started);
    spdlog::info("metrics at http://{}:{}/metrics", ho.host, metrics_server->port());
  }

  // 6. Serve until SIGTERM/SIGINT.
  //    gRPC core stays initialised until the process exits: this reference is
  //    never released. Releasing the last one (when the servers are destroyed)
  //    runs grpc_shutdown(), which joins gRPC's executor threads; after a
  //    response larger than the socket buffer, one of them can be in the TCP
  //    backup poller's poll of up to 10 s, so the daemon sat ~10 s after
  //    "paddockd stopped". Everything the daemon must finish (in-flight calls
  //    drained, sandboxes destroyed, the log closed) is its own code, below
  //    and in the destructors of Run's locals; the kernel reclaims the rest.
  grpc_init();
  service::SandboxServer server(manager, server_opts);
  if (Status st = server.Start(); !st.ok()) {
    spdlog::error("{}", st.message());
    manager.Shutdown();
    lock->RemovePidFile();
    return 1;
  }
  spdlog::info("paddockd ready (pid {}, max {} sandboxes)", getpid(), flags.max_sandboxes);

  std::promise<int> got_signal;
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    got_signal.set_value(sig);
  });
  int sig = got_signal.get_future().get();
  signal_thread.join();
  spdlog::info("received {}; shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  if (sig == SIGTERM && flags.drain_grace_s > 0) DrainBeforeStop(manager, sigs, std::chrono::seconds(flags.drain_grace_s));

  // Running episode steps finish and are logged; their rollouts resume later.
  rollout_engine.Drain(std::chrono::seconds(5));
  // Stop accepting and give in-flight calls a moment; then destroy every
  // sandbox, which also ends any exec still running so its handler returns.
  auto stopped = std::async(std::launch::async, [&] {
    server.Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  });
  stopped.wait_for(std::chrono::milliseconds(2500));
  manager.Shutdown();
  stopped.wait();
  lock->RemovePidFile();
  spdlog::info("paddockd stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"paddockd: the Paddock daemon; owns this host's sandboxes and serves the sandbox API"};
  app.add_option("--state-dir", flags.state_dir, "directory for sandbox state, the lock and pid file")
      ->capture_default_str();
  app.add_option("--socket", flags.socket,
                 "unix socket to serve on (default: $PADDOCK_SOCKET or /run/paddock/paddockd.sock)");
  app.add_option("--listen-tcp", flags.listen_tcp,
                 "also serve on TCP HOST:PORT (host defaults to 127.0.0.1); needs --token-file");
  app.add_flag("--allow-remote", flags.allow_remote, "allow --listen-tcp on a non-loopback address");
  app.add_option("--token-file", flags.token_file, "file holding the bearer token TCP clients must send");
  app.add_option("--tls-cert", flags.tls_cert,
                 "PEM certificate (chain) of the TCP listener: TLS on --listen-tcp (required for a "
                 "non-loopback address)");
  app.add_option("--tls-key", flags.tls_key, "PEM private key of --tls-cert (mode 0600)");
  app.add_option("--tls-client-ca", flags.tls_client_ca,
                 "PEM CA bundle: TCP clients must present a certificate it signed (mutual TLS)");
  app.add_option("--max-sandboxes", flags.max_sandboxes, "cap on live sandboxes")->capture_default_str();
  app.add_option("--max-running-episodes", flags.max_running_episodes,
                 "rollout episodes running at once over all rollouts; more queue, shared by --priority and "
                 "--weight (0: --max-sandboxes)")
      ->capture_default_str();
  app.add_option("--warm-pool", flags.warm_pool,
                 "ready containers kept per (image, limits, workdir) once asked for; 0 disables")
      ->capture_default_str();
  app.add_option("--microvm-warm-pool", flags.microvm_warm_pool,
                 "pre-booted microVMs kept per (image, limits, workdir) once asked for; 0 disables")
      ->capture_default_str();
  app.add_option("--microvm-accel", flags.microvm_accel,
                 "microVM accelerator: kvm (default) or tcg (QEMU's emulator, for hosts whose KVM "
                 "cannot run guests; slow)")
      ->check(CLI::IsMember({"kvm", "tcg"}));
  app.add_flag("--allow-tcg-microvms", flags.allow_tcg_microvms,
               "offer the microvm substrate under TCG (--microvm-accel tcg): QEMU's emulator is not a "
               "security boundary (QEMU's security policy), so microVM creates under TCG fail without this");
  app.add_option("--microvm-templates", flags.microvm_templates,
                 "on (default): each microVM after the first of its shape is a clone of a saved template "
                 "VM (copy-on-write RAM, fresh identity) instead of a cold boot; off: every microVM boots")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--default-ttl", flags.default_ttl,
                 "time to live in seconds for sandboxes created with ttl 0")
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "trace|debug|info|warn|error")->capture_default_str();
  app.add_option("--log-dir", flags.log_dir,
                 "trajectory log database directory (default: <state-dir>/log)");
  app.add_option("--restore-log", flags.restore_log,
                 "restore the latest backup in this directory (made by `paddock log backup`) into "
                 "the log before opening it; replaces the log's contents");
  app.add_flag("--log-allow-corruption", flags.log_allow_corruption,
               "open a trajectory log that fails its checksum checks instead of refusing to start");
  app.add_flag("--allow-dir-images", flags.allow_dir_images,
               "development only: let sandboxes created over the unix socket use a host directory "
               "(absolute path) as their image; never TCP clients or task files, never / or system "
               "directories");
  app.add_option("--image-store", flags.image_store,
                 "image store directory; may be shared storage (default: <state-dir>/images)");
  app.add_option("--layer-cache", flags.layer_cache,
                 "node-local directory where image layers are unpacked (default: <state-dir>/layer-cache)");
  app.add_option("--layer-cache-max-bytes", flags.layer_cache_max_bytes,
                 "bound on the layer cache's size; unused layers are evicted least recently used "
                 "first (0: unbounded)")
      ->capture_default_str();
  app.add_option("--registry-timeout-ms", flags.registry_timeout_ms,
                 "deadline of one registry request of `image pull` or `image push` (manifest, config, token); "
                 "a layer gets this plus its size at 256 KiB/s")
      ->check(CLI::Range(int64_t{100}, int64_t{24} * 3600 * 1000))
      ->capture_default_str();
  app.add_option("--registry-idle-timeout-ms", flags.registry_idle_timeout_ms,
                 "a registry connection that sends nothing for this long is dropped")
      ->check(CLI::Range(int64_t{100}, int64_t{3600} * 1000))
      ->capture_default_str();
  app.add_option("--insecure-registry", flags.insecure_registries,
                 "HOST[:PORT] spoken to over plain HTTP (loopback hosts always are), for images pulled on "
                 "first use and for `image pull` and `image push` from the unix socket; never for TCP clients");
  app.add_option("--registry-ca-file", flags.registry_ca_file,
                 "PEM CA certificates to verify registries with instead of the system store (pull on first "
                 "use, and `image pull` and `image push` without --ca-file)");
  app.add_option("--registry-creds-file", flags.registry_creds_file,
                 "registry credentials in docker's config.json format ({\"auths\": {\"HOST:PORT\": {\"auth\": "
                 "base64(user:password)}}}) for pulls paddockd starts itself and for unix-socket clients' pulls "
                 "that bring none (never for TCP clients or pushes); read at each pull (default: none)")
      ->check(CLI::ExistingFile);
  app.add_option("--front-lease-ms", flags.front_lease_ms,
                 "as a node: a front's sandboxes here are destroyed when its heartbeats stop for this long "
                 "(fencing: the front re-places them only after that)")
      ->check(CLI::Range(int64_t{500}, int64_t{600} * 1000))
      ->capture_default_str();
  app.add_option("--metrics-listen", flags.metrics_listen,
                 "serve Prometheus metrics at http://HOST:PORT/metrics (read-only: counts, gauges, latency "
                 "histograms; no ids or commands)");
  app.add_option("--drain-grace-s", flags.drain_grace_s,
                 "on SIGTERM, first drain: take no new sandboxes and give the live ones this long to end (a "
                 "spot-instance notice; a front moves what is left to other nodes). A second SIGTERM stops at once")
      ->check(CLI::Range(0, 24 * 3600))
      ->capture_default_str();
  app.add_option("--nodes", flags.nodes,
                 "be a front: place sandboxes on these paddockd nodes (host:port,... | dns:NAME:PORT | file:PATH); "
                 "see docs/fleet.md");
  app.add_option("--node-token-file", flags.node_token_file,
                 "with --nodes: file holding the bearer token the nodes' --token-file holds");
  app.add_option("--node-tls-ca", flags.node_tls_ca,
                 "with --nodes: speak TLS to the nodes, verifying them against this PEM CA bundle");
  app.add_option("--node-tls-cert", flags.node_tls_cert,
                 "with --nodes: this front's client certificate, for nodes with --tls-client-ca");
  app.add_option("--node-tls-key", flags.node_tls_key, "with --nodes: the key of --node-tls-cert");
  app.add_option("--node-heartbeat-ms", flags.node_heartbeat_ms, "with --nodes: how often each node is asked")
      ->check(CLI::Range(int64_t{50}, int64_t{60} * 1000))
      ->capture_default_str();
  app.add_option("--node-create-rate", flags.node_create_rate,
                 "with --nodes: sandbox creates per second per node (bursts wait their turn)")
      ->check(CLI::Range(0.1, 100000.0))
      ->capture_default_str();
  app.add_option("--place-timeout-ms", flags.place_timeout_ms,
                 "with --nodes: how long a create waits for a node that can take it")
      ->check(CLI::Range(int64_t{100}, int64_t{3600} * 1000))
      ->capture_default_str();
  app.add_option("--image-fetch-timeout-ms", flags.image_fetch_timeout_ms,
                 "a front handing a node an image of its store, and a node fetching one from a front: how long "
                 "one image may take (docs/fleet.md, \"Images across nodes\")")
      ->check(CLI::Range(int64_t{1000}, int64_t{24} * 3600 * 1000))
      ->capture_default_str();
  app.add_option("--front-id", flags.front_id, "with --nodes: this front's name on the nodes (default: the host name)");
  app.add_option("--init-path", flags.init_path,
                 "paddock-init binary (default: beside paddockd, or /usr/local/lib/paddock)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto level = spdlog::level::from_str(flags.log_level);
  if (level == spdlog::level::off && flags.log_level != "off") {
    spdlog::error("--log-level '{}': expected trace, debug, info, warn or error", flags.log_level);
    return 2;
  }
  spdlog::set_level(level);
  return Run(flags);
}
