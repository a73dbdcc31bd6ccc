# The Python SDK's pytest suite (sdk/python/tests), against a real paddockd it
# starts itself; included by tests/CMakeLists.txt. Needs the stubs generated
# by sdk/python/CMakeLists.txt and Debian's python3-grpcio/-protobuf/-pytest.
if(TARGET paddock_python_stubs AND PADDOCK_PYTHON3)
  add_test(NAME python_sdk
           COMMAND ${PADDOCK_PYTHON3} -m pytest -q -p no:cacheprovider ${PROJECT_SOURCE_DIR}/sdk/python/tests)
  set_tests_properties(python_sdk PROPERTIES
    TIMEOUT 300
    ENVIRONMENT "PYTHONPATH=${PADDOCK_PY_STUBS_DIR}:${PROJECT_SOURCE_DIR}/sdk/python;PYTHONDONTWRITEBYTECODE=1;PADDOCKD=$<TARGET_FILE:paddockd>;PADDOCK_INIT=$<TARGET_FILE:paddock-init>;PADDOCK_CLI=$<TARGET_FILE:paddock>;PADDOCK_SOURCE_DIR=${PROJECT_SOURCE_DIR};PADDOCK_TEST_ROOTFS=/var/tmp/paddock-test-rootfs/busybox")
endif()
