# End-to-end gaps of the sandbox API; included by tests/CMakeLists.txt.

# ExecStream cancellation through the real paddockd: a cancelled or vanished
# client gets its command killed in the sandbox (container, function, microvm).
if(TARGET paddock_client AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/exec_cancel_test.cc)
  paddock_test(exec_cancel_test exec_cancel_test.cc MICROVM_MIXED)
  target_link_libraries(exec_cancel_test PRIVATE paddock_client paddock_sandbox)
  add_dependencies(exec_cancel_test paddockd paddock paddock-init)
endif()

# Attacks a hostile agent or remote client would try (tests/escape_test.cc).
if(TARGET paddock_client AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/escape_test.cc)
  paddock_test(escape_test escape_test.cc)
  target_link_libraries(escape_test PRIVATE paddock_client paddock_sandbox)
  add_dependencies(escape_test paddockd paddock paddock-init)
  # Tries each denied system call family from inside a sandbox (static: it
  # runs in the busybox image).
  add_executable(seccomp_probe support/seccomp_probe.cc)
  target_link_options(seccomp_probe PRIVATE -static)
  target_compile_definitions(escape_test PRIVATE PADDOCK_SECCOMP_PROBE="$<TARGET_FILE:seccomp_probe>")
  add_dependencies(escape_test seccomp_probe)
  # Tries to leave state from one function exec to the next on the same stub.
  add_executable(exec_residue_probe support/exec_residue_probe.cc)
  target_link_options(exec_residue_probe PRIVATE -static)
  target_compile_definitions(escape_test PRIVATE PADDOCK_RESIDUE_PROBE="$<TARGET_FILE:exec_residue_probe>")
  add_dependencies(escape_test exec_residue_probe)
endif()

# A "substrate": "microvm" task through paddockd and `paddock run` (QEMU
# guests; TCG where KVM cannot run guests, as the microvm suites do).
if(TARGET paddock_rollout_engine AND TARGET paddockd AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/rollout_microvm_test.cc)
  paddock_test(rollout_microvm_test rollout_microvm_test.cc MICROVM_ONLY)
  target_link_libraries(rollout_microvm_test PRIVATE paddock_sandbox nlohmann_json::nlohmann_json)
  add_dependencies(rollout_microvm_test paddockd paddock paddock-init)
endif()
