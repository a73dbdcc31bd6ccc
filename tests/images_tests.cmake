# Image store in the substrates, snapshots, the Images service and `paddock image`
# (issue 3 parts 6 and 7); included by tests/CMakeLists.txt.
if(TARGET paddock_storage)
  # Containers and function sandboxes from stored images, config defaults,
  # snapshots forked into isolated sandboxes (real overlayfs, namespaces; root).
  paddock_test(image_substrate_test image_substrate_test.cc)
  target_link_libraries(image_substrate_test PRIVATE paddock_sandbox paddock_storage)
endif()
