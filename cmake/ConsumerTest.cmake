# CTest driver (cmake -P) for the build tests: configures, builds and runs examples/consumer
# against klgrad, either installed (MODE=install: cmake --install of BUILD_DIR into a
# temporary prefix, then find_package) or as a subdirectory (MODE=subdir).
# Inputs: MODE, SOURCE_DIR (klgrad's source), BUILD_DIR (this build), WORK_DIR (scratch),
# GENERATOR, CXX_COMPILER, BUILD_TYPE.
cmake_minimum_required(VERSION 3.16)

foreach(var MODE SOURCE_DIR BUILD_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "ConsumerTest.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()

function(run)
  string(REPLACE ";" " " shown "${ARGN}")
  message(STATUS "+ ${shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${shown}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(consumer_build "${WORK_DIR}/build")
set(configure_args -S "${SOURCE_DIR}/examples/consumer" -B "${consumer_build}" -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}"
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)

if(MODE STREQUAL "install")
  set(prefix "${WORK_DIR}/prefix")
  run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}" --config "${BUILD_TYPE}")
  foreach(f include/klgrad/klgrad.hpp include/klgrad/evaluate.hpp
            share/cmake/klgrad/klgradConfig.cmake share/cmake/klgrad/klgradConfigVersion.cmake
            share/cmake/klgrad/klgradTargets.cmake)
    if(NOT EXISTS "${prefix}/${f}")
      message(FATAL_ERROR "not installed: ${prefix}/${f}")
    endif()
  endforeach()
  # Every header of the source tree (subfolders included) must be in the prefix.
  file(GLOB_RECURSE headers RELATIVE "${SOURCE_DIR}/include" "${SOURCE_DIR}/include/klgrad/*.hpp")
  foreach(h ${headers})
    if(NOT EXISTS "${prefix}/include/${h}")
      message(FATAL_ERROR "header not installed: ${h}")
    endif()
  endforeach()
  run("${CMAKE_COMMAND}" ${configure_args} "-DCMAKE_PREFIX_PATH=${prefix}"
    -DKLGRAD_CONSUMER_SUBDIR=OFF)
  # The package must have come from the temporary prefix, not from some other install.
  file(STRINGS "${consumer_build}/CMakeCache.txt" found REGEX "^klgrad_DIR:")
  string(FIND "${found}" "${prefix}/" at)
  if(NOT at GREATER -1)
    message(FATAL_ERROR "find_package(klgrad) did not use ${prefix}: ${found}")
  endif()
elseif(MODE STREQUAL "subdir")
  run("${CMAKE_COMMAND}" ${configure_args} -DKLGRAD_CONSUMER_SUBDIR=ON
    "-DKLGRAD_SOURCE_DIR=${SOURCE_DIR}")
else()
  message(FATAL_ERROR "ConsumerTest.cmake: MODE must be install or subdir, got '${MODE}'")
endif()

run("${CMAKE_COMMAND}" --build "${consumer_build}" --config "${BUILD_TYPE}")
run("${consumer_build}/consumer")
message(STATUS "consumer (${MODE}) built and ran")
