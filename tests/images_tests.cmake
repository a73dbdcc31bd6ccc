# Image store in the substrates, snapshots, the Images service and `paddock image`
# (issue 3 parts 6 and 7); included by tests/CMakeLists.txt.
if(TARGET paddock_storage)
  # Containers and function sandboxes from stored images, config defaults,
  # snapshots forked into isolated sandboxes (real overlayfs, namespaces; root).
  paddock_test(image_substrate_test image_substrate_test.cc)
  target_link_libraries(image_substrate_test PRIVATE paddock_sandbox paddock_storage paddock_store_images)
  # `paddock image …` and `paddock sandbox snapshot` against a real paddockd.
  paddock_test(image_cli_test image_cli_test.cc)
  target_link_libraries(image_cli_test PRIVATE paddock_storage)
  add_dependencies(image_cli_test paddockd paddock)
endif()

# Issue 4 part 4: an episode's sandbox rebuilt from its latest snapshot plus its
# idempotent calls after a real SIGKILL of paddockd; non-idempotent calls after
# the snapshot (completed or in doubt) fail the rebuild with the reason.
paddock_test(snapshot_rebuild_test snapshot_rebuild_test.cc)
target_link_libraries(snapshot_rebuild_test PRIVATE paddock_client)
add_dependencies(snapshot_rebuild_test paddockd)

# Issue 14: `paddock image pull` from Debian's docker-registry (pushed to by
# skopeo from an umoci layout) and from a misbehaving HTTP server in the test
# (retries, Range-resumed layers, parallel layers); sandboxes from the pulled
# names, pulls on first use by creates and a rollout task (~70 s on the loaded
# 2-core machine). Skipped when those tools are absent.
if(TARGET paddock_registry)
  paddock_test(registry_pull_test registry_pull_test.cc)
  target_link_libraries(registry_pull_test PRIVATE paddock_registry paddock_client)
  add_dependencies(registry_pull_test paddockd paddock)
  set_tests_properties(registry_pull_test PROPERTIES TIMEOUT 600)
  # Issue 14 (auth and push): `paddock image push`, basic and bearer token auth,
  # credentials files; Debian's docker-registry with TLS and htpasswd.
  paddock_test(registry_push_test registry_push_test.cc)
  target_link_libraries(registry_push_test PRIVATE paddock_registry paddock_client)
  add_dependencies(registry_push_test paddockd paddock)
endif()
