// Stands first on the include path of the front end's header check (tests/CMakeLists.txt):
// the front end, which the Python extension compiles, must not need yaml-cpp.
#error "a header of frontend/klgrad_frontend includes yaml-cpp; only tools/ may"
