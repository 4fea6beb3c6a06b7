#include "base/type_name.h"

#include <cxxabi.h>

#include <cstdlib>

namespace ember {

std::string ReadableTypeName(const std::type_info& type) {
  const char* mangled = type.name();
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
  std::free(demangled);
  for (const std::string noise : {"ember::", "(anonymous namespace)::"}) {
    for (size_t at = name.find(noise); at != std::string::npos; at = name.find(noise)) name.erase(at, noise.size());
  }
  return name;
}

}  // namespace ember
