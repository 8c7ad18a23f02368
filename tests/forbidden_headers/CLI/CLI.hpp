// Stands first on the include path of the front end's header check (tests/CMakeLists.txt):
// the front end, which the Python extension compiles, must not need CLI11.
#error "a header of frontend/klgrad_frontend includes CLI11; only tools/ may"
