// Looks a C function up by name for the shims that reach CUDA libraries at run time: `name`
// in `library` (a dlopen handle, or RTLD_DEFAULT for the whole process) into `slot`; the
// first name not found is kept in `missing` (the shim's reason when it is asked).
#pragma once

#include <dlfcn.h>

#include <string>

template <typename T>
void find_function(void* library, T& slot, const char* name, std::string& missing) {
  slot = reinterpret_cast<T>(dlsym(library, name));
  if (slot == nullptr && missing.empty()) {
    missing = name;
  }
}
