# microVM substrate suites (tests/microvm_*.cc); included by tests/CMakeLists.txt.
# The boot cases need QEMU, the guest kernel and a usable KVM (or
# PADDOCK_MICROVM_ACCEL=tcg on machines whose KVM cannot run guests).
paddock_test(microvm_test microvm_test.cc MICROVM_ONLY)
target_link_libraries(microvm_test PRIVATE paddock_sandbox)
add_dependencies(microvm_test paddock-init)

# Through a real paddockd and the paddock CLI.
if(TARGET paddockd AND TARGET paddock)
  paddock_test(microvm_daemon_test microvm_daemon_test.cc MICROVM_ONLY)
  target_link_libraries(microvm_daemon_test PRIVATE paddock_sandbox)
  # The egress case drives the daemon through the C++ SDK.
  if(TARGET paddock_client)
    target_link_libraries(microvm_daemon_test PRIVATE paddock_client)
  endif()
  add_dependencies(microvm_daemon_test paddockd paddock paddock-init)
endif()
