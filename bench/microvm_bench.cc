// microvm_bench: the microvm substrate against QEMU itself, in one run.
//
//   baseline  QEMU boots the same kernel ELF, with the same machine options,
//             to a busybox /init that prints a marker (spawn -> marker seen)
//   cold      Create (no warm pool) -> first exec answered
//   warm      Create handed over from the warm pool -> first exec answered
//   exec      exec round trip (`true`) on a live VM, median of --execs
//   density   --vms VMs alive at once (each answers an exec; template clones
//             with --density-clones); host RSS per idle VM (sum of QEMU's
//             VmRSS / count); exec round trip p50/p99 across them
//   clone     Create of a template clone (issue 17: the template built once,
//             before the timings) -> first exec answered, beside cold
//   memory    --clones clones and as many cold VMs idle at once: each QEMU's
//             Rss, Pss and private (Private_Clean + Private_Dirty, what one
//             more VM adds) from /proc/PID/smaps_rollup
//   pause     a 256 MiB guest running a process paused (memory to disk,
//             QEMU gone) and resumed until it answers; beside cold
//   fork      a running VM forked into --forks copies until all answer (each
//             copy asked at once; also when Fork returned, all restored)
//
// Every cold row runs with templates off; the clone rows with templates on.
// Medians of --runs. Run by hand (root; QEMU, the guest kernel, erofs-utils,
// busybox-static installed); --accel tcg on hosts whose KVM cannot run
// guests (the numbers are then emulation numbers, not the targets' path).
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "sandbox/linux/cgroup.h"
#include "sandbox/manager.h"
#include "sandbox/microvm/boot_assets.h"
#include "sandbox/microvm/microvm_substrate.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace paddock;

namespace {

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// QEMU to a busybox /init printing a marker: the peer of "cold".
double BaselineBootMs(const std::string& kernel_elf, const std::string& dir, const std::string& accel) {
  microvm::CpioWriter w;
  w.Dir("bin");
  w.Dir("dev");
  w.CharDev("dev/console", 0600, 5, 1);
  w.File("bin/busybox", ReadAll("/bin/busybox"), 0755);
  w.File("init", "#!/bin/busybox sh\n/bin/busybox echo PADDOCK-BOOT-MARKER\n/bin/busybox reboot -f\n", 0755);
  std::string initrd = dir + "/baseline.cpio";
  std::ofstream(initrd, std::ios::binary) << w.Finish();
  const bool kvm = accel != "tcg";
  // The substrate's machine, cpu, memory and kernel command line (less its
  // paddock.* words); stdout carries the serial console.
  std::string cmdline =
      "console=ttyS0 quiet panic=-1 reboot=t rdinit=/init pci=off i8042.noaux i8042.nomux "
      "i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests random.trust_cpu=on "
      "no_timer_check tsc=reliable sysctl.vm.panic_on_oom=1";
  if (!kvm) cmdline += " tsc_early_khz=2000000";
  std::vector<std::string> argv = {"/usr/bin/qemu-system-x86_64", "-M", "microvm,x-option-roms=off",
                                   "-accel", kvm ? "kvm" : "tcg,tb-size=64", "-cpu", kvm ? "host" : "max",
                                   "-smp", "1", "-m", "704M", "-nodefaults", "-no-user-config",
                                   "-display", "none", "-no-reboot", "-kernel", kernel_elf,
                                   "-initrd", initrd, "-append", cmdline,
                                   "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"};
  int out[2];
  if (pipe(out) != 0) return -1;
  auto start = Clock::now();
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    close(out[0]);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  close(out[1]);
  std::string got;
  char buf[4096];
  double ms = -1;
  for (;;) {
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
    if (got.find("PADDOCK-BOOT-MARKER") != std::string::npos) {
      ms = Ms(Clock::now() - start);
      break;
    }
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  close(out[0]);
  return ms;
}

uint64_t QemuRssBytes(const std::string& state) {
  uint64_t total = 0;
  for (pid_t pid : StrayQemuProcesses(state)) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    for (std::string line; std::getline(in, line);)
      if (line.rfind("VmRSS:", 0) == 0) total += std::stoull(line.substr(6)) * 1024;
  }
  return total;
}

struct Smaps {
  double rss = 0, pss = 0, priv = 0;  // MiB
};
// The QEMU process of VM `id` (its command line names it).
pid_t QemuPidOf(const std::string& id) {
  std::string needle = "paddock-vm-" + id + std::string(1, '\0');
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd.find("qemu-system") != std::string::npos && cmd.find(needle) != std::string::npos) return std::stoi(name);
  }
  return -1;
}
Smaps SmapsOf(pid_t pid) {
  Smaps m;
  std::ifstream in(fmt::format("/proc/{}/smaps_rollup", pid));
  for (std::string line; std::getline(in, line);) {
    auto kb = [&](const char* key) {
      return line.rfind(key, 0) == 0 ? std::stod(line.substr(std::string(key).size())) / 1024 : 0.0;
    };
    m.rss += kb("Rss:");
    m.pss += kb("Pss:");
    m.priv += kb("Private_Clean:") + kb("Private_Dirty:");
  }
  return m;
}
Smaps MedianSmaps(const std::vector<std::string>& ids) {
  std::vector<double> rss, pss, priv;
  for (const auto& id : ids) {
    Smaps m = SmapsOf(QemuPidOf(id));
    rss.push_back(m.rss);
    pss.push_back(m.pss);
    priv.push_back(m.priv);
  }
  return {Median(rss), Median(pss), Median(priv)};
}
// Resident size of this process's template memfds (their RAM), MiB.
double TemplateRamMiB() {
  double total = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    std::string target = fs::read_symlink(e.path(), ec).string();
    if (ec || target.rfind("/memfd:paddock-template-", 0) != 0) continue;
    struct stat st {};
    if (stat(e.path().c_str(), &st) == 0) total += st.st_blocks * 512.0 / (1 << 20);
  }
  return total;
}

bool ExecOk(Sandbox& sb) {
  ExecRequest r;
  r.argv = {"true"};
  auto res = sb.Exec(r, nullptr);
  return res.ok() && res->exit_code == 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"microvm_bench: the microvm substrate vs QEMU booting the same kernel (bench/README.md)"};
  std::string accel = "kvm";
  int runs = 5, execs = 200, vms = 50, clones = 8, forks = 8;
  std::string state = "/var/tmp/paddock-microvm-bench";
  bool allow_tcg = false;
  app.add_option("--accel", accel, "kvm or tcg")->capture_default_str();
  app.add_flag("--allow-tcg-microvms", allow_tcg,
               "accept --accel tcg (QEMU's emulator is not a security boundary; the bench's guests are its own)");
  app.add_option("--runs", runs, "boots per measurement (median)")->capture_default_str();
  app.add_option("--execs", execs, "execs for the round-trip median")->capture_default_str();
  app.add_option("--vms", vms, "VMs alive at once for the density row")->capture_default_str();
  app.add_option("--clones", clones, "clones (and cold VMs) idle at once for the memory rows")->capture_default_str();
  app.add_option("--forks", forks, "copies made by the fork row")->capture_default_str();
  bool density_clones = false;
  app.add_flag("--density-clones", density_clones, "the density row's VMs are template clones (default: cold boots)");
  app.add_option("--state-dir", state, "state dir (removed first)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  fs::remove_all(state);
  fs::create_directories(state);
  SubstrateEnv env;
  env.state_dir = state;
  env.init_path = testing::BuiltBinary("paddock-init");
  env.warm_pool_size = 0;
  MicrovmOptions opts = MicrovmOptionsFromEnvironment();
  opts.accel = accel;
  opts.allow_tcg = opts.allow_tcg || allow_tcg;
  MicrovmOptions tpl_opts = opts;
  tpl_opts.templates = true;
  opts.templates = false;  // every row but the clone rows boots cold
  if (Status st = CheckAccelerator(opts); !st.ok()) {
    std::fprintf(stderr, "microvm_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  SandboxSpec spec;
  spec.image = testing::EnsureBusyboxRootfs();

  // Boot assets and the layer disk are built once, outside the timings.
  auto warmup_sub = MakeMicrovmSubstrate(env, opts);
  {
    auto sb = warmup_sub->Create("warmup", spec);
    if (!sb.ok()) {
      std::fprintf(stderr, "microvm_bench: %s\n", sb.status().ToString().c_str());
      return 1;
    }
  }
  std::string kernel;
  for (const auto& e : fs::directory_iterator(state + "/microvm/boot"))
    if (e.path().filename().string().rfind("vmlinux-", 0) == 0) kernel = e.path();

  std::vector<double> base, cold, warm, rtt;
  for (int i = 0; i < runs; ++i) base.push_back(BaselineBootMs(kernel, state, accel));
  // Template clones: the template is made by the first create (timed on its
  // own); then cold creates and clone creates alternate, so that both see
  // the same load on a shared machine.
  std::vector<double> clone_ms;
  double template_first_ms = 0;
  auto tpl_sub = MakeMicrovmSubstrate(env, tpl_opts);
  {
    auto t0 = Clock::now();
    auto sb = tpl_sub->Create("tpl-first", spec);
    if (!sb.ok() || !ExecOk(**sb)) {
      std::fprintf(stderr, "first clone failed: %s\n", sb.ok() ? "exec" : sb.status().ToString().c_str());
      return 1;
    }
    template_first_ms = Ms(Clock::now() - t0);
  }
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    auto sb = warmup_sub->Create(fmt::format("cold{}", i), spec);
    if (!sb.ok() || !ExecOk(**sb)) {
      std::fprintf(stderr, "cold create failed: %s\n", sb.ok() ? "exec" : sb.status().ToString().c_str());
      return 1;
    }
    cold.push_back(Ms(Clock::now() - t0));
    sb->reset();
    t0 = Clock::now();
    auto cl = tpl_sub->Create(fmt::format("clone{}", i), spec);
    if (!cl.ok() || !ExecOk(**cl)) {
      std::fprintf(stderr, "clone create failed: %s\n", cl.ok() ? "exec" : cl.status().ToString().c_str());
      return 1;
    }
    clone_ms.push_back(Ms(Clock::now() - t0));
  }
  {
    SubstrateEnv pooled = env;
    pooled.warm_pool_size = 1;
    auto sub = MakeMicrovmSubstrate(pooled, opts);
    auto first = sub->Create("pool-first", spec);  // asks for the recipe
    if (!first.ok()) return 1;
    double boot_ms = Median(cold);
    for (int i = 0; i < runs; ++i) {
      // Let the pool refill (one boot, with margin).
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(boot_ms * 3) + 200));
      auto t0 = Clock::now();
      auto sb = sub->Create(fmt::format("warm{}", i), spec);
      if (!sb.ok() || !ExecOk(**sb)) return 1;
      warm.push_back(Ms(Clock::now() - t0));
    }
    for (int i = 0; i < execs; ++i) {
      auto t0 = Clock::now();
      if (!ExecOk(**first)) return 1;
      rtt.push_back(Ms(Clock::now() - t0));
    }
    sub->Shutdown();
  }
  const MicrovmCounters* counters = MicrovmCountersOf(tpl_sub.get());
  // Memory: --clones clones and --clones cold VMs idle at once.
  std::vector<std::unique_ptr<Sandbox>> idle;
  std::vector<std::string> clone_ids, cold_ids;
  for (int i = 0; i < clones; ++i) {
    for (bool clone : {true, false}) {
      std::string id = fmt::format("{}{}", clone ? "mc" : "mb", i);
      auto sb = (clone ? tpl_sub : warmup_sub)->Create(id, spec);
      if (!sb.ok() || !ExecOk(**sb)) {
        std::fprintf(stderr, "memory: VM %s failed\n", id.c_str());
        return 1;
      }
      idle.push_back(std::move(sb).value());
      (clone ? clone_ids : cold_ids).push_back(id);
    }
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  Smaps clone_mem = MedianSmaps(clone_ids), cold_mem = MedianSmaps(cold_ids);
  double template_ram = TemplateRamMiB();
  uint64_t clones_made = counters ? counters->clones.load() : 0, clone_cold = counters ? counters->cold_boots.load() : 0;
  idle.clear();

  // Pause -> resume of a 256 MiB guest (a 64 MiB sandbox + the guest's 192 MiB)
  // running a process, until it answers again; fork of a running VM into
  // --forks copies, until every copy answers. Both from template clones.
  std::vector<double> pause_ms, resume_ms, roundtrip_ms, fork_ms, fork_restored_ms;
  uint64_t paused_bytes = 0;
  {
    SandboxSpec small = spec;
    small.limits.memory_bytes = 64ull << 20;
    for (int i = 0; i < runs; ++i) {
      auto sb = tpl_sub->Create(fmt::format("pause{}", i), small);
      if (!sb.ok() || !ExecOk(**sb)) {
        std::fprintf(stderr, "pause: create failed\n");
        return 1;
      }
      ExecRequest bg;
      bg.shell = "(while true; do date > /tmp/now; sleep 0.1; done) >/dev/null 2>&1 &";
      if (!(*sb)->Exec(bg, nullptr).ok()) return 1;
      auto t0 = Clock::now();
      auto p = (*sb)->Pause("bench");
      auto t1 = Clock::now();
      if (!p.ok()) {
        std::fprintf(stderr, "pause failed: %s\n", p.status().ToString().c_str());
        return 1;
      }
      paused_bytes = p->state_bytes;
      Status r = (*sb)->Resume();
      if (!r.ok() || !ExecOk(**sb)) {
        std::fprintf(stderr, "resume failed: %s\n", r.ToString().c_str());
        return 1;
      }
      auto t2 = Clock::now();
      pause_ms.push_back(Ms(t1 - t0));
      resume_ms.push_back(Ms(t2 - t1));
      roundtrip_ms.push_back(Ms(t2 - t0));
    }
    for (int i = 0; i < runs; ++i) {
      auto parent = tpl_sub->Create(fmt::format("fp{}", i), spec);
      if (!parent.ok() || !ExecOk(**parent)) return 1;
      std::vector<std::string> ids;
      for (int k = 0; k < forks; ++k) ids.push_back(fmt::format("f{}x{}", i, k));
      auto t0 = Clock::now();
      auto copies = (*parent)->Fork(ids);
      if (!copies.ok()) {
        std::fprintf(stderr, "fork failed: %s\n", copies.status().ToString().c_str());
        return 1;
      }
      fork_restored_ms.push_back(Ms(Clock::now() - t0));
      // Every copy asked at once, as a caller of N running copies would: the
      // row is the time until the last one has answered.
      std::vector<char> answered(copies->size(), 0);
      std::vector<std::thread> askers;
      for (size_t k = 0; k < copies->size(); ++k)
        askers.emplace_back([&, k] { answered[k] = ExecOk(*(*copies)[k]); });
      for (auto& t : askers) t.join();
      if (std::count(answered.begin(), answered.end(), 0) > 0) return 1;
      fork_ms.push_back(Ms(Clock::now() - t0));
    }
  }

  // Density: --vms VMs alive at once, each answering.
  std::vector<std::unique_ptr<Sandbox>> alive;
  auto d0 = Clock::now();
  for (int i = 0; i < vms; ++i) {
    auto sb = (density_clones ? tpl_sub : warmup_sub)->Create(fmt::format("d{}", i), spec);
    if (!sb.ok()) {
      std::fprintf(stderr, "density: VM %d failed: %s\n", i, sb.status().ToString().c_str());
      break;
    }
    alive.push_back(std::move(sb).value());
  }
  double density_s = Ms(Clock::now() - d0) / 1000;
  int answering = 0;
  for (auto& sb : alive) answering += ExecOk(*sb);
  // Exec latency across them all once each has answered: 5 rounds over every VM.
  std::vector<double> across;
  for (int round = 0; round < 5; ++round)
    for (auto& sb : alive) {
      auto t0 = Clock::now();
      if (ExecOk(*sb)) across.push_back(Ms(Clock::now() - t0));
    }
  std::sort(across.begin(), across.end());
  auto pct = [&](double q) {
    return across.empty() ? 0.0 : across[std::min(across.size() - 1, static_cast<size_t>(q * across.size()))];
  };
  std::this_thread::sleep_for(std::chrono::seconds(2));
  uint64_t rss = QemuRssBytes(state);
  size_t n = StrayQemuProcesses(state).size();

  double b = Median(base), c = Median(cold), w = Median(warm), e = Median(rtt);
  std::printf("accel=%s runs=%d (medians)\n", accel.c_str(), runs);
  std::printf("| baseline: QEMU boot to busybox /init marker | %.0f ms |\n", b);
  std::printf("| cold create -> first exec | %.0f ms | %.2fx baseline (target <= 1.2x, <= 300 ms) |\n", c, c / b);
  std::printf("| warm-pool create -> first exec | %.2f ms | target <= 5 ms |\n", w);
  std::printf("| exec round trip (true) | %.2f ms | target <= 2 ms |\n", e);
  std::printf("| VMs alive at once | %d of %d answering (%zu QEMU processes), created in %.1f s |\n",
              answering, vms, n, density_s);
  std::printf("| host RSS per idle VM (%s) | %.1f MiB |\n", density_clones ? "template clones" : "cold boots",
              n ? rss / double(n) / (1 << 20) : 0.0);
  std::printf("| exec round trip across the %zu VMs (5 rounds) | p50 %.1f ms, p99 %.1f ms |\n", alive.size(), pct(0.5),
              pct(0.99));
  double k = Median(clone_ms);
  std::printf("| template: first create (boot, save, clone) -> first exec | %.0f ms |\n", template_first_ms);
  std::vector<double> pair;
  for (size_t i = 0; i < clone_ms.size() && i < cold.size(); ++i) pair.push_back(clone_ms[i] / cold[i]);
  std::printf("| template clone create -> first exec | %.0f ms | %.3f of cold (target <= 0.1); median of paired runs %.3f |\n",
              k, k / c, Median(pair));
  std::printf("| idle VMs at once | %d clones, %d cold (clone substrate: %llu clones, %llu cold boots) |\n", clones,
              clones, static_cast<unsigned long long>(clones_made), static_cast<unsigned long long>(clone_cold));
  std::printf("| cold VM QEMU: Rss / Pss / private | %.1f / %.1f / %.1f MiB |\n", cold_mem.rss, cold_mem.pss,
              cold_mem.priv);
  std::printf("| clone QEMU: Rss / Pss / private | %.1f / %.1f / %.1f MiB |\n", clone_mem.rss, clone_mem.pss,
              clone_mem.priv);
  std::printf("| memory added per idle clone (private) vs a cold VM's (private) | %.3f (target <= 0.25); Pss ratio %.3f |\n",
              clone_mem.priv / cold_mem.priv, clone_mem.pss / cold_mem.pss);
  std::printf("| template RAM (memfd, resident, once per template) | %.1f MiB |\n", template_ram);
  double rt = Median(roundtrip_ms), fk = Median(fork_ms);
  std::printf("| pause (256 MiB guest, %.1f MiB saved) | %.0f ms |\n", paused_bytes / 1048576.0, Median(pause_ms));
  std::printf("| resume -> first exec | %.0f ms |\n", Median(resume_ms));
  std::printf("| pause -> resume round trip | %.0f ms | %.3f of cold (target <= 0.2) |\n", rt, rt / c);
  std::printf("| fork of a running VM into %d: all restored (Fork returned) | %.0f ms | %.3f of cold |\n", forks,
              Median(fork_restored_ms), Median(fork_restored_ms) / c);
  std::printf("| fork of a running VM into %d, until all answer (asked at once) | %.0f ms | %.3f of cold (target <= 0.5) |\n",
              forks, fk, fk / c);
  tpl_sub->Shutdown();
  alive.clear();
  warmup_sub->Shutdown();
  FlushCgroupRemovals();
  fs::remove_all(state);
  return 0;
}
