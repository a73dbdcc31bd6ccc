# The Debian 12 minbase + python3 test image (issue 3, part 8); included by
# tests/CMakeLists.txt. The image is built once by scripts/make-debian-image.sh
# (debootstrap + umoci; needs root and the Debian mirror) and cached in
# BUILD/test-images; the first run takes minutes, later runs reuse it at once.
if(TARGET paddock_storage)
  add_library(paddock_debian_image STATIC support/debian_image.cc)
  target_include_directories(paddock_debian_image PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(paddock_debian_image PUBLIC fmt::fmt)
  target_compile_definitions(paddock_debian_image PRIVATE PADDOCK_SOURCE_DIR="${PROJECT_SOURCE_DIR}")

  # Import twice (stable digest, nothing written again), export round trip,
  # materialized layers, python3 in a real container sandbox; the script's
  # --help, bad arguments and unreachable-mirror error.
  paddock_test(debian_image_test debian_image_test.cc)
  target_link_libraries(debian_image_test PRIVATE paddock_debian_image paddock_storage paddock_sandbox paddock_store_images)
  add_dependencies(debian_image_test paddock-init)
  target_compile_definitions(debian_image_test PRIVATE PADDOCK_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  # A cold cache builds the image first (debootstrap: minutes on a loaded machine).
  set_tests_properties(debian_image_test PROPERTIES TIMEOUT 1500 RESOURCE_LOCK debian_test_image)

  # The store on a small tmpfs running out of space mid-import.
  paddock_test(debian_image_diskfull_test debian_image_diskfull_test.cc)
  target_link_libraries(debian_image_diskfull_test PRIVATE paddock_debian_image paddock_storage)
  set_tests_properties(debian_image_diskfull_test PROPERTIES TIMEOUT 1500 RESOURCE_LOCK debian_test_image)
endif()

# Issue 14: the image pushed by one paddockd to a loopback docker-registry,
# then a container created from the registry reference by a second one runs
# python3 (tests/debian_registry_test.cc).
if(TARGET paddock_registry)
  paddock_test(debian_registry_test debian_registry_test.cc)
  target_link_libraries(debian_registry_test PRIVATE paddock_debian_image)
  add_dependencies(debian_registry_test paddockd paddock paddock-init)
  set_tests_properties(debian_registry_test PROPERTIES TIMEOUT 1500 RESOURCE_LOCK debian_test_image)
endif()
