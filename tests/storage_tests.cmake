# Image store suites; included by tests/CMakeLists.txt.
if(TARGET paddock_storage)
  # Blob store, layers, images, import/export and every hostile-archive case,
  # against a real store in a temp dir and archives built at test time.
  paddock_test(storage_test storage_test.cc)
  target_link_libraries(storage_test PRIVATE paddock_storage)
  # Copying an image between stores by its id (a fleet node fetching from its front).
  paddock_test(image_copy_test image_copy_test.cc)
  target_link_libraries(image_copy_test PRIVATE paddock_storage)

  # Not a test: measures the layer format choices on a sample directory
  # (docs/image-store.md). Usage: storage_measure [DIR]
  add_executable(storage_measure storage_measure.cc)
  target_link_libraries(storage_measure PRIVATE paddock_storage paddock_test_support)
endif()

# Materialization cache (storage/layer_cache.h): unpack once, concurrent first use,
# overlay whiteouts through a real overlay mount (root), LRU with leases, restart.
if(TARGET paddock_storage)
  paddock_test(layer_cache_test layer_cache_test.cc)
  target_link_libraries(layer_cache_test PRIVATE paddock_storage)
endif()
