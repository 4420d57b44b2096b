// The shims' error convention: a C call runs its body under `guarded`, returns 0, or 1
// with the exception's message kept in the file's thread-local `error` string (which its
// `..._last_error` function hands to Rust).
#pragma once

#include <exception>
#include <string>

template <typename F>
int guarded(std::string& error, F body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {
    error = "unknown C++ exception";
  }
  return 1;
}
