# Deploying a fleet: the Kubernetes manifests (deploy/kubernetes) and
# scripts/fleet.sh. Included by tests/CMakeLists.txt.

# Every object of every manifest against its Kubernetes schema (npm's
# kubernetes-models, installed by scripts/install-deps.sh into
# /usr/local/lib/paddock-node or $PADDOCK_NODE_DEPS), the cross-references
# between them, negative checks on broken copies, and the paddockd flags used
# against `paddockd --help` when paddockd is built. No cluster needed.
find_program(PADDOCK_NODEJS NAMES node nodejs)
if(PADDOCK_NODEJS)
  set(_paddock_validate ${PADDOCK_NODEJS} ${PROJECT_SOURCE_DIR}/tests/k8s/validate_manifests.mjs)
  if(TARGET paddockd)
    list(APPEND _paddock_validate --paddockd $<TARGET_FILE:paddockd>)
  endif()
  add_test(NAME deploy_manifests COMMAND ${_paddock_validate})
else()
  add_test(NAME deploy_manifests COMMAND sh -c
           "echo 'deploy_manifests: node (nodejs) not found: run scripts/install-deps.sh' >&2; exit 1")
endif()
set_tests_properties(deploy_manifests PROPERTIES TIMEOUT 120)

# scripts/fleet.sh: start 2 nodes and a front, both nodes ready, a sandbox
# placed through the front runs `echo ok`, stop leaves nothing running; its
# --help and usage errors.
if(TARGET paddockd AND TARGET paddock AND TARGET paddock-init)
  add_test(NAME fleet_script_test COMMAND bash ${PROJECT_SOURCE_DIR}/tests/fleet_script_test.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(fleet_script_test PROPERTIES TIMEOUT 300)
  # A test is no target: this one makes the binaries the script runs part of
  # every build (`cmake --build build`), so the test never runs stale ones.
  add_custom_target(fleet_script_test_binaries ALL)
  add_dependencies(fleet_script_test_binaries paddockd paddock paddock-init)
endif()
